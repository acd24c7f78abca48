package admin

import (
	"crypto/tls"
	"errors"
	"fmt"
)

// loadTLS loads the API's certificate and key (PEM files), both or
// neither: nil is plain HTTP. They are read once, by New: a renewed
// certificate takes a restart.
func loadTLS(certFile, keyFile string) (*tls.Config, error) {
	switch {
	case certFile == "" && keyFile == "":
		return nil, nil
	case certFile == "" || keyFile == "":
		return nil, errors.New("admin: tls_cert_file and tls_key_file go together")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("admin: tls: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
