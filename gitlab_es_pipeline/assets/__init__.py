"""The software-defined assets: repositories -> file_manifest -> line_documents -> es_index."""

from gitlab_es_pipeline.assets.documents import manifest_and_line_documents
from gitlab_es_pipeline.assets.es_index import es_index
from gitlab_es_pipeline.assets.repositories import repositories

__all__ = ["es_index", "manifest_and_line_documents", "repositories"]
