module vsmpool/gojson

go 1.19
