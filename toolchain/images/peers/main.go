// Command cellguard-peers is a stand-in for a stream server of the Kinesis front-end kind: it
// keeps BASE threads plus PER_PEER threads for every other member of its fleet, and learns the
// fleet from the Kubernetes API (the EndpointSlices of its headless Service, with its own
// ServiceAccount token; no cluster DNS needed), every second. When the fleet grows, every
// member grows its threads; past the pod's pids.max the kernel refuses the next clone
// (EAGAIN) and the Go runtime exits with "failed to create new OS thread" - every member at
// once, which is how the November 2020 outage went.
//
//	cellguard-peers SERVICE BASE PER_PEER
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"time"
)

const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount"

type endpointSlices struct {
	Items []struct {
		Endpoints []struct {
			Addresses []string `json:"addresses"`
		} `json:"endpoints"`
	} `json:"items"`
}

func fleet(client *http.Client, server, namespace, service, token string) (int, error) {
	query := url.Values{"labelSelector": {"kubernetes.io/service-name=" + service}}
	request, err := http.NewRequest("GET", fmt.Sprintf(
		"%s/apis/discovery.k8s.io/v1/namespaces/%s/endpointslices?%s",
		server, namespace, query.Encode()), nil)
	if err != nil {
		return 0, err
	}
	request.Header.Set("Authorization", "Bearer "+token)
	response, err := client.Do(request)
	if err != nil {
		return 0, err
	}
	defer response.Body.Close()
	if response.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("listing endpointslices: HTTP %d", response.StatusCode)
	}
	var slices endpointSlices
	if err := json.NewDecoder(response.Body).Decode(&slices); err != nil {
		return 0, err
	}
	members := map[string]bool{}
	for _, slice := range slices.Items {
		for _, endpoint := range slice.Endpoints {
			for _, address := range endpoint.Addresses {
				members[address] = true
			}
		}
	}
	return len(members), nil
}

func hold(started chan struct{}) {
	runtime.LockOSThread() // this goroutine keeps its thread to itself
	started <- struct{}{}
	select {}
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: cellguard-peers SERVICE BASE PER_PEER")
		os.Exit(64)
	}
	service := os.Args[1]
	base, err1 := strconv.Atoi(os.Args[2])
	perPeer, err2 := strconv.Atoi(os.Args[3])
	if err1 != nil || err2 != nil || base < 0 || perPeer < 0 {
		fmt.Fprintln(os.Stderr, "cellguard-peers: BASE and PER_PEER are counts")
		os.Exit(64)
	}
	token, err := os.ReadFile(serviceAccount + "/token")
	namespace, err3 := os.ReadFile(serviceAccount + "/namespace")
	ca, err4 := os.ReadFile(serviceAccount + "/ca.crt")
	if err != nil || err3 != nil || err4 != nil {
		fmt.Fprintln(os.Stderr, "cellguard-peers: no service account token mounted")
		os.Exit(1)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}
	server := "https://" + net.JoinHostPort(
		os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"))
	started := make(chan struct{})
	held, peers := 0, -1
	for {
		members, err := fleet(client, server, string(namespace), service, string(token))
		if err != nil {
			fmt.Fprintf(os.Stderr, "cellguard-peers: %v\n", err)
		} else if members-1 != peers && members > 0 {
			peers = members - 1
			want := base + perPeer*peers
			for ; held < want; held++ {
				go hold(started)
				<-started
			}
			fmt.Printf("cellguard-peers: %d peers, holding %d threads\n", peers, held)
		}
		time.Sleep(time.Second)
	}
}
