"""The `gitlab-es-pipeline` command line: search, status, dev, receiver, hooks install."""
