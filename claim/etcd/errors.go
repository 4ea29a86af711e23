package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stampede-go/stampede/claim/driver"
)

// configErrors are etcd's refusals that waiting will not fix: a wrong
// user name or password, no user name where the server wants one, a
// token the server no longer honours (and the client could not renew), a
// permission the user lacks.
var configErrors = [...]error{
	rpctypes.ErrAuthFailed,
	rpctypes.ErrUserEmpty,
	rpctypes.ErrInvalidAuthToken,
	rpctypes.ErrPermissionDenied,
}

// fail maps the error of a call made with ctx: nil stays nil; a
// configuration error (isConfig) wraps driver.ErrConfig, and so does any
// other failure without a working connection while the last connection
// made found a server of another kind at the address (kindCheck), which
// the error then names; etcd's
// request-too-large wraps driver.ErrTooLarge; if ctx is done (the call was
// abandoned), the error wraps ctx's.
func (b *backend) fail(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case isConfig(err):
		return driver.Misconfigured(err)
	case errors.Is(err, rpctypes.ErrRequestTooLarge) || errors.Is(err, rpctypes.ErrGRPCRequestTooLarge):
		return fmt.Errorf("%w: %w", driver.ErrTooLarge, err)
	}
	if k := b.kind.wrong(); k != nil && !b.connected() {
		return fmt.Errorf("%w (%w)", driver.Misconfigured(k), err)
	}
	if c := ctx.Err(); c != nil && !errors.Is(err, c) {
		return fmt.Errorf("%w: %w", c, err)
	}
	return err
}

// isConfig reports whether err is a configuration error: one of
// configErrors (etcd's EtcdError, or the gRPC status it travels as), a
// gRPC Unauthenticated or PermissionDenied status, or Unimplemented (a
// gRPC server that is not etcd v3).
func isConfig(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, driver.ErrConfig) {
		return true
	}
	e := etcdError(err)
	for _, c := range configErrors {
		if errors.Is(e, c) || errors.Is(err, c) {
			return true
		}
	}
	code := codes.OK
	var ee rpctypes.EtcdError
	if errors.As(e, &ee) {
		code = ee.Code()
	} else if s, ok := status.FromError(err); ok {
		code = s.Code()
	}
	switch code {
	case codes.Unauthenticated, codes.PermissionDenied, codes.Unimplemented:
		return true
	}
	return false
}

// etcdError returns etcd's own error (an rpctypes.EtcdError) that err is,
// or that ends its text: a watch the server cancels carries the server's
// error as text only ("rpc error: code = PermissionDenied desc =
// etcdserver: permission denied"), and wrapping hides it from
// rpctypes.Error. Otherwise err itself.
func etcdError(err error) error {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee
	}
	if errors.As(rpctypes.Error(err), &ee) {
		return ee
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, "desc = "); i >= 0 {
		msg = msg[i+len("desc = "):]
	} else if i := strings.LastIndex(msg, "etcdserver: "); i >= 0 {
		msg = msg[i:]
	}
	if e := rpctypes.Error(errors.New(msg)); errors.As(e, &ee) {
		return ee
	}
	return err
}
