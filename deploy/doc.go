// Package deploy holds how alexring is deployed: the container images
// (Dockerfile, Dockerfile.cuda), the Kubernetes manifests (k8s/, kustomize) and
// the scripts for one machine (local/). It has no code; its tests check that
// the manifests decode as the Kubernetes API types and agree with each other
// and with the commands' flags.
package deploy
