"""Jinja templates shipped inside the wheel as ``modelimage.templates``
(Dockerfiles, GitHub Actions steps, Makefile targets, Kubernetes manifests)."""
