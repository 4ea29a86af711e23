package dynamo

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/smithy-go"

	"github.com/stampede-go/stampede/claim/driver"
)

// pingKey is the key whose item Ping reads: one no caller can name (the
// client reserves the prefix).
const pingKey = "\x00stampede:ping"

// Ping implements driver.Pinger: one GetItem (eventually consistent, the
// key attribute only) of an item nobody writes, after creating the table
// if the URL asked for it (create_table=true). It proves in one round
// trip that the endpoint answers as DynamoDB does (with a request id),
// that it accepts the credentials and GetItem on the table, that the
// table exists, and that its key is the string attribute "k" alone.
func (b *backend) Ping(ctx context.Context) error {
	if err := b.ensureTable(ctx); err != nil {
		return err
	}
	out, err := b.c.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:                aws.String(b.table),
		Key:                      b.itemKey(pingKey),
		ProjectionExpression:     aws.String("#k"),
		ExpressionAttributeNames: map[string]string{"#k": "k"},
	})
	if err != nil {
		return classify(b.table, err)
	}
	if id, _ := awsmiddleware.GetRequestIDMetadata(out.ResultMetadata); id == "" {
		return driver.Misconfigured(errors.New("the endpoint answered, but not as DynamoDB does (no request id)"))
	}
	return nil
}

// ensureTable creates the table the first time a call needs it, if the
// URL asked for it (create_table=true): at open, Ping does; with
// lazy=true, the first call. A failed attempt is tried again by the next
// call. One attempt runs at a time; the others wait for it within their
// ctx.
func (b *backend) ensureTable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !b.create || b.created.Load() {
		return nil
	}
	select {
	case b.creator <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-b.creator }()
	if b.created.Load() {
		return nil
	}
	if err := CreateTable(ctx, b.c, b.table); err != nil {
		return err
	}
	b.created.Store(true)
	return nil
}

// configCodes are the error codes of DynamoDB's answers that say the
// client is misconfigured: credentials it does not know or a signature
// that does not verify (a wrong secret key), no credentials, a
// permission the credentials lack, a table that does not exist.
var configCodes = map[string]bool{
	"UnrecognizedClientException":         true,
	"InvalidSignatureException":           true,
	"IncompleteSignatureException":        true,
	"MissingAuthenticationTokenException": true,
	"MissingAuthenticationToken":          true,
	"AccessDeniedException":               true,
	"ResourceNotFoundException":           true,
}

// classify wraps with driver.ErrConfig (Misconfigured) the errors that
// say the client is not configured for what it talks to, keeping the
// SDK's error underneath for errors.As: DynamoDB's configCodes, a
// ValidationException saying the key does not match the table's schema
// (a table made for something else), and an endpoint that is not
// DynamoDB (notDynamo). Anything else (no answer, throttling, DynamoDB's
// own failures) is left to the client to report as unavailability.
func classify(table string, err error) error {
	if err == nil || errors.Is(err, driver.ErrConfig) || errors.Is(err, driver.ErrTooLarge) {
		return err
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch code := ae.ErrorCode(); {
		case code == "ResourceNotFoundException":
			return fmt.Errorf("%w: table %q not found (create it, see CreateTable): %w", driver.ErrConfig, table, err)
		case configCodes[code]:
			return driver.Misconfigured(err)
		case code == "ValidationException" && strings.Contains(ae.ErrorMessage(), "does not match the schema"):
			return fmt.Errorf("%w: table %q: its key is not the string attribute \"k\" alone: %w", driver.ErrConfig, table, err)
		}
	}
	if notDynamo(err) {
		return driver.Misconfigured(err)
	}
	return err
}

// notDynamo reports an answer that did not come from DynamoDB: an HTTP
// answer without DynamoDB's request id, other than a gateway's 5xx (which
// may pass); an answer that is not HTTP; a TLS endpoint that is not, or
// whose certificate does not verify.
func notDynamo(err error) bool {
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.RequestID == "" {
		if c := re.HTTPStatusCode(); c != 0 && c < 500 {
			return true
		}
	}
	var cve *tls.CertificateVerificationError
	var rhe tls.RecordHeaderError
	if errors.As(err, &cve) || errors.As(err, &rhe) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "malformed HTTP") || strings.Contains(msg, "server gave HTTP response to HTTPS client")
}
