"""The software-defined assets: repositories -> file_manifest -> line_documents -> es_index."""

import warnings

from dagster import BetaWarning

from gitlab_es_pipeline.defs.assets.documents import manifest_and_line_documents
from gitlab_es_pipeline.defs.assets.es_index import es_index
from gitlab_es_pipeline.defs.assets.repositories import repositories

# The indexed commit is each materialization's data version, which Dagster 1.13 calls a beta
# parameter of Output and says so at every step that yields one; it asks nothing of the user.
# Only that message.
warnings.filterwarnings(
    "ignore", message=r"Parameter `data_version` of initializer `Output", category=BetaWarning
)

__all__ = ["es_index", "manifest_and_line_documents", "repositories"]
