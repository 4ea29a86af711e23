package testserver

// ComposeURLs are the STAMPEDE_TEST_<KIND>_URL values for the servers of
// docker-compose.test.yml (host ports on 127.0.0.1, chosen away from the
// servers' default ports so a local install does not collide):
//
//	docker compose -f docker-compose.test.yml up -d --wait
//	export STAMPEDE_TEST_REDIS_URL='redis://127.0.0.1:16379/0'   # and so on
//
// TestComposeFile checks them against the compose file and the docs.
var ComposeURLs = map[Kind]string{
	Redis:     "redis://127.0.0.1:16379/0",
	Postgres:  "postgres://postgres@127.0.0.1:15432/postgres?sslmode=disable",
	Memcache:  "memcache://127.0.0.1:21211",
	Etcd:      "etcd://127.0.0.1:12379",
	Consul:    "consul://127.0.0.1:18500",
	Dynamo:    "dynamodb://stampede?region=us-east-1&endpoint=http%3A%2F%2F127.0.0.1%3A18000",
	ZooKeeper: "zookeeper://127.0.0.1:12181",
	NATS:      "nats://127.0.0.1:14222",
	MySQL:     "mysql://root:stampede@127.0.0.1:13306/stampede",
}
