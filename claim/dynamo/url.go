package dynamo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens dynamodb:// URLs. Neither registration nor OpenURL
// dials: the check claim.Open makes next (Ping) is the first request,
// and creates the table with create_table=true; with lazy=true, the first
// call does both.
type URLOpener struct{}

// OpenURL implements driver.URLOpener.
func (*URLOpener) OpenURL(ctx context.Context, u *url.URL) (driver.Driver, error) {
	if u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.Port() != "" {
		return nil, errors.New("dynamo: URL must be dynamodb://TABLE[?PARAMS]")
	}
	p := driver.NewParams(u)
	region := p.String("region", "")
	endpoint := p.String("endpoint", "")
	create := p.Bool("create_table", false)
	dialTimeout := p.Duration("dial_timeout", DefaultDialTimeout)
	o := Options{
		Table:     u.Host,
		Prefix:    p.String("prefix", DefaultPrefix),
		ClockSkew: p.Duration("clock_skew", 0),
		PollMin:   p.Duration("poll_min", 0),
		PollMax:   p.Duration("poll_max", 0),
		PollFixed: !p.Bool("poll_learn", true),
	}
	if r := p.String("retention", ""); r == "off" {
		o.Retention = -1
	} else if r != "" {
		d, err := time.ParseDuration(r)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("dynamo: URL parameter retention=%q: want a duration or off", r)
		}
		o.Retention = d
	}
	if err := p.Err(); err != nil {
		return nil, fmt.Errorf("dynamo: %w", err)
	}
	// An empty region leaves the SDK's own.
	opts := []func(*config.LoadOptions) error{config.WithRetryMaxAttempts(1), config.WithRegion(region)}
	if endpoint != "" {
		eu, err := url.Parse(endpoint)
		if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
			return nil, fmt.Errorf("dynamo: URL parameter endpoint: want an http(s) URL")
		}
		if h := eu.Hostname(); (h == "localhost" || net.ParseIP(h).IsLoopback()) && os.Getenv("AWS_ACCESS_KEY_ID") == "" && os.Getenv("AWS_PROFILE") == "" {
			opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("stampede", "stampede", "")))
		}
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("dynamo: load AWS config: %w", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("dynamo: no region: set the region URL parameter or AWS_REGION")
	}
	// A transport of our own (with what the config put in the SDK's, such
	// as AWS_CA_BUNDLE), so that Close can drop its idle connections, and
	// connection attempts are bounded by dial_timeout (requests are, by
	// their context: the Client's operation timeout).
	var tr *http.Transport
	if bc, ok := cfg.HTTPClient.(*awshttp.BuildableClient); ok {
		tr = bc.WithDialerOptions(func(d *net.Dialer) { d.Timeout = dialTimeout }).GetTransport()
	} else {
		tr = http.DefaultTransport.(*http.Transport).Clone()
		tr.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	}
	tr.TLSHandshakeTimeout = dialTimeout
	// A batch sends up to MaxBatch writes at once, a connection each:
	// keep that many idle for the next one instead of handshaking again.
	if tr.MaxIdleConns > 0 { // 0: no limit
		tr.MaxIdleConns = max(tr.MaxIdleConns, MaxBatch)
	}
	tr.MaxIdleConnsPerHost = max(tr.MaxIdleConnsPerHost, MaxBatch)
	cfg.HTTPClient = &http.Client{Transport: tr}
	client := dynamodb.NewFromConfig(cfg, func(do *dynamodb.Options) {
		if endpoint != "" {
			do.BaseEndpoint = aws.String(endpoint)
		}
	})
	b, err := newBackend(client, o)
	if err != nil {
		return nil, err
	}
	b.closeIdle = tr.CloseIdleConnections
	b.create = create
	return b, nil
}

// createTableWait bounds CreateTable's wait for the table to be active.
const createTableWait = 5 * time.Minute

// CreateTable creates table with the key schema this package uses
// (partition key "k", string; on-demand billing), waits until it is
// active (at most 5 minutes, and ctx), and enables DynamoDB TTL on the
// attribute "exp". A table that exists already is not an error (its
// schema is not checked here; a Client's check at open is); neither is
// an endpoint without UpdateTimeToLive (dynalite). Errors DynamoDB
// answers for credentials or permissions wrap claim.ErrConfig.
func CreateTable(ctx context.Context, client *dynamodb.Client, table string) error {
	_, err := client.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName:            aws.String(table),
		AttributeDefinitions: []types.AttributeDefinition{{AttributeName: aws.String("k"), AttributeType: types.ScalarAttributeTypeS}},
		KeySchema:            []types.KeySchemaElement{{AttributeName: aws.String("k"), KeyType: types.KeyTypeHash}},
		BillingMode:          types.BillingModePayPerRequest,
	})
	var inUse *types.ResourceInUseException
	if err != nil && !errors.As(err, &inUse) {
		return fmt.Errorf("dynamo: create table %q: %w", table, classify(table, err))
	}
	w := dynamodb.NewTableExistsWaiter(client, func(o *dynamodb.TableExistsWaiterOptions) {
		o.MinDelay, o.MaxDelay = 20*time.Millisecond, time.Second
	})
	if err := w.Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(table)}, createTableWait); err != nil {
		return fmt.Errorf("dynamo: wait for table %q to be active: %w", table, classify(table, err))
	}
	// Errors are ignored: already enabled (ValidationException) and not
	// implemented (dynalite: UnknownOperationException) are both fine, TTL
	// only reclaiming space.
	_, _ = client.UpdateTimeToLive(ctx, &dynamodb.UpdateTimeToLiveInput{
		TableName:               aws.String(table),
		TimeToLiveSpecification: &types.TimeToLiveSpecification{AttributeName: aws.String("exp"), Enabled: aws.Bool(true)},
	})
	return nil
}
