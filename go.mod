module github.com/tcpmap/tcpmap

go 1.26.8
