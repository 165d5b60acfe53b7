"""Test stand-ins for GitLab and Elasticsearch: real HTTP on 127.0.0.1, real clients.

They follow the services' documented behaviour for what the pipeline uses; see the README's
"Test stand-ins" section for what they do not reproduce.
"""
