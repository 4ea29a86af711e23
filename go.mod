module github.com/stampede-go/stampede

go 1.26.8
