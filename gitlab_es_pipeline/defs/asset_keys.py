"""The pipeline's asset keys and asset checks, named once: the assets, the jobs, the sensor,
the runs' records and the command line all refer to these."""

from dagster import AssetKey

REPOSITORIES = AssetKey("repositories")
FILE_MANIFEST = AssetKey("file_manifest")
LINE_DOCUMENTS = AssetKey("line_documents")
ES_INDEX = AssetKey("es_index")
# Where each partition's dead letters are kept, beside the assets (not an asset itself).
DEAD_LETTERS = AssetKey("es_index_dead_letters")

# The blocking check of file_manifest, and the check of es_index.
MANIFEST_CHECK = "manifest_accounts_for_tree"
DOCUMENT_COUNT_CHECK = "document_count_matches_manifest"
