package dynamo

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestOwnClient: a client the user configured (credentials provider,
// endpoint, retries) works through New, and As hands it back. DynamoDB
// authenticates requests by their SigV4 signature, which dynalite does
// not check: credentials are the SDK's business (default chain, or the
// client given to New), and no stampede test can prove a wrong key is
// refused.
func TestOwnClient(t *testing.T) {
	raw := server(t)
	u, _ := url.Parse(raw)
	endpoint := u.Query().Get("endpoint")
	c := dynamodb.New(dynamodb.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret-access-key-S3cret", ""),
	})
	b, err := New(c, &Options{Table: u.Host, Prefix: "own-client"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	securitytest.Roundtrip(t, b)
	var got *dynamodb.Client
	if !b.As(&got) || got != c {
		t.Errorf("As(**dynamodb.Client) = %v, %p; want true, the client given to New", got != nil, got)
	}
	var wrong *http.Client
	if b.As(&wrong) {
		t.Error("As(**http.Client) = true")
	}
}

// TestLimits: keys around the 2048-byte partition key limit, where the
// readable form gives way to the hashed one, work against the server and
// stay distinct, and the server itself refuses an item over 400 KB.
// (MaxValueLen against the server: the conformance check TooLarge.)
func TestLimits(t *testing.T) {
	b := backendtest.Open(t, backendtest.WithQuery(t, server(t), "prefix", "limits"))
	d := drv(b)
	m := d.enc.MaxLen
	securitytest.LongKeys(t, b, []int{m - 1, m, m + 1, 2048, 2049, 5000})
	_, err := d.c.PutItem(context.Background(), &dynamodb.PutItemInput{
		TableName: aws.String(d.table),
		Item: map[string]types.AttributeValue{
			"k": &types.AttributeValueMemberS{Value: "raw"},
			"v": &types.AttributeValueMemberB{Value: make([]byte, 400*1024+1)},
		},
	})
	if err == nil {
		t.Error("the server accepted an item over 400 KB")
	}
}

// TestHostileValues: bytes written into L2 by someone else read as misses.
func TestHostileValues(t *testing.T) {
	securitytest.Hostile(t, backendtest.Open(t, backendtest.WithQuery(t, server(t), "prefix", "hostile")))
}

// FuzzKeyNames: item keys are valid UTF-8 without control characters, at
// most 2048 bytes (DynamoDB's partition key limit) with the default and
// with the longest prefix, and two keys never share an item.
func FuzzKeyNames(f *testing.F) {
	var bs []*backend
	for _, p := range []string{"", strings.Repeat("p", 1000)} {
		b, err := newBackend(dynamodb.New(dynamodb.Options{Region: "us-east-1"}), Options{Prefix: p})
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { b.Close() })
		bs = append(bs, b)
	}
	securitytest.FuzzKeys(f, 2038, func(t *testing.T, k1, k2 string) {
		for _, b := range bs {
			names := func(k string) []string {
				s := b.itemKey(k)["k"].(*types.AttributeValueMemberS).Value
				if !utf8.ValidString(s) {
					t.Fatalf("item key of %q is not valid UTF-8", k)
				}
				return []string{s}
			}
			securitytest.CheckEncoding(t, k1, k2, names, maxKeyLen, func(c byte) bool { return c >= ' ' && c != 0x7f })
		}
	}, "\xff", "\xfe", "ünï", "uni")
}

// withTable returns rawURL naming table, and endpoint if not "".
func withTable(t *testing.T, rawURL, table, endpoint string) string {
	t.Helper()
	if endpoint != "" {
		rawURL = backendtest.WithQuery(t, rawURL, "endpoint", endpoint)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = table
	return u.String()
}

// TestNoHang: against an endpoint that accepts connections and never
// answers, Open, every Client method and Close return within the
// operation timeout (+1 s), with ErrUnavailable.
func TestNoHang(t *testing.T) {
	securitytest.NoHang(t, "dynamodb://stampede?region=us-east-1&endpoint="+url.QueryEscape("http://"+securitytest.Unresponsive(t)))
}

// TestConfigRefused: a table that does not exist (without create_table),
// a table whose key is not this package's, and an endpoint that is not
// DynamoDB fail Open with ErrConfig; a lazily opened Client's Get too,
// and flight on it never runs its loader. (Wrong credentials cannot be
// tested here: dynalite accepts any signature. The error codes DynamoDB
// answers them with are mapped by classify; see TestClassify.)
func TestConfigRefused(t *testing.T) {
	raw := server(t)
	t.Run("missing table", func(t *testing.T) {
		securitytest.ConfigRefused(t, withTable(t, raw, "no-such-table", ""), "")
	})
	t.Run("other key schema", func(t *testing.T) {
		d := drv(backendtest.Open(t, raw))
		_, err := d.c.CreateTable(context.Background(), &dynamodb.CreateTableInput{
			TableName:            aws.String("other-schema"),
			AttributeDefinitions: []types.AttributeDefinition{{AttributeName: aws.String("id"), AttributeType: types.ScalarAttributeTypeS}},
			KeySchema:            []types.KeySchemaElement{{AttributeName: aws.String("id"), KeyType: types.KeyTypeHash}},
			BillingMode:          types.BillingModePayPerRequest,
		})
		var inUse *types.ResourceInUseException
		if err != nil && !errors.As(err, &inUse) {
			t.Fatal(err)
		}
		securitytest.ConfigRefused(t, withTable(t, raw, "other-schema", ""), "")
	})
	t.Run("not DynamoDB", func(t *testing.T) {
		hs := httptest.NewServer(http.NotFoundHandler())
		t.Cleanup(hs.Close)
		securitytest.ConfigRefused(t, withTable(t, raw, "stampede", hs.URL), "")
	})
	t.Run("not DynamoDB, 200 and nothing", func(t *testing.T) {
		hs := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		t.Cleanup(hs.Close)
		c, err := claim.Open(context.Background(), withTable(t, raw, "stampede", hs.URL))
		if err == nil {
			c.Close()
		}
		if !errors.Is(err, claim.ErrConfig) {
			t.Errorf("Open: %v, want ErrConfig", err)
		}
	})
}

// TestClassify: the answers DynamoDB gives a misconfigured client, which
// dynalite never gives (credentials, permissions), wrap ErrConfig with
// the SDK's error underneath; throttling and server errors do not.
func TestClassify(t *testing.T) {
	for code, config := range map[string]bool{
		"UnrecognizedClientException":            true,
		"InvalidSignatureException":              true,
		"MissingAuthenticationTokenException":    true,
		"AccessDeniedException":                  true,
		"ResourceNotFoundException":              true,
		"ProvisionedThroughputExceededException": false,
		"ThrottlingException":                    false,
		"InternalServerError":                    false,
	} {
		err := classify("t", &smithy.OperationError{ServiceID: "DynamoDB", OperationName: "GetItem",
			Err: &awshttp.ResponseError{RequestID: "r", ResponseError: &smithyhttp.ResponseError{
				Response: &smithyhttp.Response{Response: &http.Response{StatusCode: 400}},
				Err:      &smithy.GenericAPIError{Code: code, Message: "m"},
			}}})
		if errors.Is(err, claim.ErrConfig) != config {
			t.Errorf("%s: %v; ErrConfig %v, want %v", code, err, !config, config)
		}
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != code {
			t.Errorf("%s: the SDK's error is not underneath: %v", code, err)
		}
	}
}

// TestCreateTable: with create_table=true, Open's check creates the
// table; with lazy=true as well, Open sends nothing and the first call
// creates it.
func TestCreateTable(t *testing.T) {
	raw := server(t)
	d := drv(backendtest.Open(t, raw))
	exists := func(table string) bool {
		_, err := d.c.DescribeTable(context.Background(), &dynamodb.DescribeTableInput{TableName: aws.String(table)})
		var nf *types.ResourceNotFoundException
		if err != nil && !errors.As(err, &nf) {
			t.Fatal(err)
		}
		return err == nil
	}
	for _, lazy := range []string{"false", "true"} {
		table := "created-" + lazy + "-" + securitytest.Unique(t)
		c := backendtest.Open(t, backendtest.WithQuery(t, withTable(t, raw, table, ""), "create_table", "true", "lazy", lazy))
		if got := exists(table); got != (lazy == "false") {
			t.Errorf("lazy=%s: after Open, table exists: %v", lazy, got)
		}
		if _, err := c.Get(backendtest.Context(t), "k"); !errors.Is(err, claim.ErrNotFound) {
			t.Errorf("lazy=%s: Get: %v, want ErrNotFound", lazy, err)
		}
		if !exists(table) {
			t.Errorf("lazy=%s: no table after the first call", lazy)
		}
	}
}

// TestNewChecks: New checks the table (unless lazy) with the client it
// is given, and a failed check leaves that client alone.
func TestNewChecks(t *testing.T) {
	u, _ := url.Parse(server(t))
	c := dynamodb.New(dynamodb.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(u.Query().Get("endpoint")),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
	})
	if _, err := New(c, &Options{Table: "no-such-table"}); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("New on a missing table: %v, want ErrConfig", err)
	}
	b, err := New(c, &Options{Table: "no-such-table", Client: &claim.Options{Lazy: true}})
	if err != nil {
		t.Fatalf("New lazy: %v", err)
	}
	b.Close()
	if _, err := c.ListTables(context.Background(), &dynamodb.ListTablesInput{}); err != nil {
		t.Errorf("the client given to New, after New failed and a Close: %v", err)
	}
}

// TestSubscriptions: a subscription whose endpoint goes away is woken
// (its poll fails), and the re-check meets ErrUnavailable; Subscribe on a
// missing table fails with ErrConfig instead of waiting. On a dynalite of
// its own: cutting the link drops requests in flight.
func TestSubscriptions(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Dynamo, nil)
	raw := table(t, srv)
	p := securitytest.NewProxy(t, srv.Addr())
	c := backendtest.Open(t, withTable(t, raw, "stampede", "http://"+p.Addr()))
	s := backendtest.Subscribe(t, c, "server-gone")
	p.Cut()
	if !backendtest.Woken(s, 15*time.Second) {
		t.Fatal("the subscriber was not woken when its endpoint went away")
	}
	if _, err := c.Get(backendtest.Context(t), "server-gone"); !errors.Is(err, claim.ErrUnavailable) {
		t.Errorf("Get with the endpoint gone: %v, want ErrUnavailable", err)
	}

	bad := backendtest.Open(t, backendtest.WithQuery(t, withTable(t, raw, "no-such-table", ""), "lazy", "true"))
	if s, err := bad.Subscribe(backendtest.Context(t), "k"); !errors.Is(err, claim.ErrConfig) {
		if err == nil {
			s.Close()
		}
		t.Errorf("Subscribe on a missing table: %v, want ErrConfig", err)
	}
}
