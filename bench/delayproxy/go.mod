module silverline.dev/bench/delayproxy

go 1.22
