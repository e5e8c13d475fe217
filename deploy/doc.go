// Package deploy holds how alexring is deployed: the container images
// (Dockerfile, Dockerfile.cuda), the Kubernetes manifests (k8s/, kustomize),
// the Slurm batch script (slurm/, with its test on a real one-node Slurm), the
// GPU machine's check (gpu/) and the scripts for one machine (local/). It has
// no code; its tests check that the manifests decode as the Kubernetes API
// types and agree with each other and with the commands' flags, and run the
// Slurm script against a fake srun.
package deploy
