module github.com/stampede-go/stampede/faults

go 1.26.8

require (
	github.com/Shopify/toxiproxy/v2 v2.12.0
	github.com/anishathalye/porcupine v1.3.1
	github.com/rs/zerolog v1.33.0
	github.com/stampede-go/stampede v0.0.0-00010101000000-000000000000
	go.uber.org/goleak v1.3.0
)

replace github.com/stampede-go/stampede => ../
