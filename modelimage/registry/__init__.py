"""OCI distribution client: auth, upload, resume, mount, manifests."""
