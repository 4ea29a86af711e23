package dynamo

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
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
