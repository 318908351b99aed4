// Command etcd is a single-member etcd for the ferrolb lab and tests.
//
// It embeds go.etcd.io/etcd/server/v3/embed at the version that the pinned
// k8s.io/kubernetes release requires, so no prebuilt etcd is downloaded. It
// serves clients on one loopback URL (plain HTTP), logs "etcd ready" once the
// member serves, and closes cleanly on SIGTERM or SIGINT.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	dataDir := flag.String("data-dir", "", "directory for the member's data (required)")
	name := flag.String("name", "default", "member name")
	clientURL := flag.String("listen-client-urls", "http://127.0.0.1:2379", "client URL to serve (loopback only)")
	peerURL := flag.String("listen-peer-urls", "http://127.0.0.1:2380", "peer URL to serve (loopback only)")
	logLevel := flag.String("log-level", "warn", "etcd log level: debug, info, warn, error")
	quota := flag.Int64("quota-backend-bytes", 0, "backend size quota in bytes (0: etcd's default)")
	noFsync := flag.Bool("unsafe-no-fsync", false, "skip fsync (faster tests; data may be lost on a crash)")
	readyTimeout := flag.Duration("ready-timeout", 60*time.Second, "give up if the member is not serving by then")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()

	if *showVersion {
		fmt.Printf("etcd Version: %s (embedded, ferrolb tests/kube)\n", version.Version)
		return
	}
	if *dataDir == "" {
		log.Fatal("etcd: --data-dir is required")
	}
	cu := loopbackURL("listen-client-urls", *clientURL)
	pu := loopbackURL("listen-peer-urls", *peerURL)

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = *logLevel
	cfg.QuotaBackendBytes = *quota
	cfg.UnsafeNoFsync = *noFsync

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Fatalf("etcd: start: %v", err)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	select {
	case <-e.Server.ReadyNotify():
		log.Printf("etcd ready: client %s, peer %s, data %s, version %s", cu.String(), pu.String(), *dataDir, version.Version)
	case err := <-e.Err():
		e.Close()
		log.Fatalf("etcd: failed before ready: %v", err)
	case <-time.After(*readyTimeout):
		e.Server.Stop()
		e.Close()
		log.Fatalf("etcd: not ready after %s", *readyTimeout)
	case s := <-sig:
		e.Close()
		log.Printf("etcd: %s before ready; stopped", s)
		return
	}

	select {
	case s := <-sig:
		log.Printf("etcd: %s; stopping", s)
		e.Close()
		log.Printf("etcd stopped")
	case err := <-e.Err():
		e.Close()
		log.Fatalf("etcd: %v", err)
	}
}

// loopbackURL parses an http URL and refuses any host that is not a loopback
// IP address, so the lab's etcd can never be reached from outside the machine.
func loopbackURL(flagName, raw string) url.URL {
	u, err := url.Parse(raw)
	if err != nil {
		log.Fatalf("etcd: --%s %q: %v", flagName, raw, err)
	}
	if u.Scheme != "http" {
		log.Fatalf("etcd: --%s %q: only http:// is supported", flagName, raw)
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || !ip.IsLoopback() {
		log.Fatalf("etcd: --%s %q: host must be a loopback IP address (127.0.0.0/8 or ::1)", flagName, raw)
	}
	if u.Port() == "" {
		log.Fatalf("etcd: --%s %q: a port is required", flagName, raw)
	}
	return *u
}
