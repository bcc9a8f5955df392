//! Certificates: the etcd CA and its server, peer and client certificates, and the cluster CA.
