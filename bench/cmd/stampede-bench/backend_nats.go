package main

import _ "github.com/stampede-go/stampede/claim/nats"
