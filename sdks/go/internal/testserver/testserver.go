// Package testserver runs the real Spinwire server binary for the SDK's integration
// tests: it writes a config with free loopback ports, starts the binary, waits for
// /health, and stops it with SIGTERM (SIGKILL after 5 s), failing if the server log
// shows a panic.
package testserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

// DefaultBin is used when $SPINWIRE_BIN is unset: the debug build of the repository this
// file belongs to (/work/main/target/debug/spinwire in the usual checkout).
var DefaultBin = func() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "/work/main/target/debug/spinwire"
	}
	// <repo>/sdks/go/internal/testserver/testserver.go
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "..", "target", "debug", "spinwire")
}()

// Credentials baked into the base config.
const (
	APIKey     = "test-grpc-api-key"
	HMACSecret = "test-hmac-secret"
)

// Server is a running spinwire process.
type Server struct {
	// APIAddr is the gRPC server API, StreamAddr serves both uni_grpc and grpc_stream.
	APIAddr    string
	StreamAddr string
	HTTPAddr   string
	Dir        string
	LogPath    string

	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
}

// Bin returns the server binary path, or an error saying how to provide it.
func Bin() (string, error) {
	bin := os.Getenv("SPINWIRE_BIN")
	if bin == "" {
		bin = DefaultBin
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("spinwire server binary not found at %s (build the server or set SPINWIRE_BIN): %w", bin, err)
	}
	return bin, nil
}

// BaseConfig is the config every test server starts from: HS256 tokens, the gRPC server
// API with a key, uni and bidi gRPC streams on one port, and a "chat" namespace with
// presence, join/leave, history and forced recovery.
func BaseConfig(httpPort, apiPort, streamPort int) map[string]any {
	return map[string]any{
		"log":         map[string]any{"level": "info"},
		"health":      map[string]any{"enabled": true},
		"http_server": map[string]any{"address": "127.0.0.1", "port": httpPort},
		"http_api":    map[string]any{"key": "test-http-api-key"},
		"grpc_api":    map[string]any{"enabled": true, "address": "127.0.0.1", "port": apiPort, "key": APIKey},
		"uni_grpc":    map[string]any{"enabled": true, "address": "127.0.0.1", "port": streamPort},
		"grpc_stream": map[string]any{"enabled": true, "address": "127.0.0.1", "port": streamPort},
		"client": map[string]any{
			"token": map[string]any{"hmac_secret_key": HMACSecret},
		},
		"channel": map[string]any{
			"namespaces": []any{map[string]any{
				"name":                          "chat",
				"allow_subscribe_for_client":    true,
				"allow_publish_for_subscriber":  true,
				"allow_publish_for_client":      true,
				"presence":                      true,
				"allow_presence_for_subscriber": true,
				"join_leave":                    true,
				"history_size":                  100,
				"history_ttl":                   "300s",
				"allow_history_for_subscriber":  true,
				"force_recovery":                true,
			}},
		},
	}
}

// Start launches the server with BaseConfig adjusted by customize (may be nil).
func Start(customize func(cfg map[string]any)) (*Server, error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	cfg := BaseConfig(ports[0], ports[1], ports[2])
	if customize != nil {
		customize(cfg)
	}
	dir, err := os.MkdirTemp("", "spinwire-go-test-")
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "config.json")
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "server.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &Server{
		APIAddr:    addr(ports[1]),
		StreamAddr: addr(ports[2]),
		HTTPAddr:   addr(ports[0]),
		Dir:        dir,
		LogPath:    logPath,
		cmd:        cmd,
		exited:     make(chan struct{}),
		log:        logFile,
	}
	go func() { _ = cmd.Wait(); close(s.exited) }()
	if err := s.waitHealthy(15 * time.Second); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("%w\nserver log:\n%s", err, s.Log())
	}
	return s, nil
}

func addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// freePorts asks the kernel for n distinct free loopback ports. Holding every listener
// until all are picked keeps them distinct.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (s *Server) waitHealthy(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	client := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return errors.New("spinwire server exited during startup")
		default:
		}
		resp, err := client.Get("http://" + s.HTTPAddr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				// The gRPC listeners come up with the HTTP one, but make sure.
				if err := dialable(s.APIAddr); err == nil {
					if err := dialable(s.StreamAddr); err == nil {
						return nil
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("spinwire server not healthy within %s", limit)
}

func dialable(address string) error {
	conn, err := net.DialTimeout("tcp", address, time.Second)
	if err != nil {
		return err
	}
	return conn.Close()
}

// Log returns what the server has written so far.
func (s *Server) Log() string {
	data, _ := os.ReadFile(s.LogPath)
	return string(data)
}

// Stop terminates the server and reports a panic found in its log.
func (s *Server) Stop() error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.log.Close()
	log := s.Log()
	if bytes.Contains([]byte(log), []byte("panicked")) {
		return fmt.Errorf("spinwire server panicked; log in %s:\n%s", s.LogPath, log)
	}
	return os.RemoveAll(s.Dir)
}
