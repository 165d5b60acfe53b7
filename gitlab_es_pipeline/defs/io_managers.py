"""Parquet on any fsspec location, written and read in row groups so memory stays flat."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    AssetKey,
    ConfigurableIOManagerFactory,
    InputContext,
    OutputContext,
    UPathIOManager,
)
from pydantic import Field
from upath import UPath

from gitlab_es_pipeline.dagster_private import escape_dotdot_segments


@dataclass(frozen=True)
class StagedParquet:
    """A Parquet file an asset already wrote (row group by row group); the IO manager moves it."""

    path: str
    rows: int


def stage_parquet(
    path: str,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    dictionary_columns: Sequence[str] | None = None,
) -> StagedParquet:
    """Write batches as row groups as they come: memory holds one batch, not the table.

    dictionary_columns: the columns worth a dictionary (few distinct values); by default all,
    but trying one on a column of distinct values (line text, ids) only costs time. No
    min/max statistics: the pipeline reads its files whole, and computing them over every
    string page was about 15 % of writing line documents.
    """
    rows = 0
    use_dictionary = list(dictionary_columns) if dictionary_columns is not None else True
    with pq.ParquetWriter(
        path, schema, compression="zstd", use_dictionary=use_dictionary, write_statistics=False
    ) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return StagedParquet(path, rows)


class ParquetFile:
    """A lazily opened Parquet file: read whole (small tables) or batch by batch."""

    def __init__(self, path: UPath) -> None:
        self.path = path

    def read(self) -> pa.Table:
        with self.path.open("rb") as f:
            return pq.read_table(f)

    def iter_batches(
        self, batch_size: int = 8192, dictionary_columns: Sequence[str] = ()
    ) -> Iterator[pa.RecordBatch]:
        """One row group at a time, decoded on this thread: read-ahead and decoding threads
        would cost about 20 MB of resident memory for no gain on a sequential read.

        dictionary_columns come back as dictionary arrays, as they are stored: a reader that
        works per distinct value then never sees each row's copy.
        """
        with self.path.open("rb") as f:
            parquet = pq.ParquetFile(f, pre_buffer=False, read_dictionary=dictionary_columns)
            yield from parquet.iter_batches(batch_size=batch_size, use_threads=False)

    @property
    def schema(self) -> pa.Schema:
        """The columns and the schema's metadata (a manifest's header), without the rows."""
        with self.path.open("rb") as f:
            return pq.read_schema(f)

    @property
    def num_rows(self) -> int:
        with self.path.open("rb") as f:
            return pq.ParquetFile(f).metadata.num_rows


class ParquetStore(UPathIOManager):
    extension = ".parquet"

    def make_safe_partition_path(self, base_path: UPath, partition: str) -> UPath:
        return base_path / escape_dotdot_segments(partition.lstrip("/"))

    def dump_to_path(self, context: OutputContext, obj: Any, path: UPath) -> None:
        self._replace(path, obj)

    def _replace(self, path: UPath, obj: Any) -> None:
        """Write beside, then rename: a reader never sees a half-written file."""
        tmp = path.with_name(path.name + ".tmp")
        if isinstance(obj, pa.Table):
            with tmp.open("wb") as f:
                pq.write_table(obj, f, compression="zstd")
        elif isinstance(obj, StagedParquet):
            if path.protocol in ("", "file", "local"):
                shutil.move(obj.path, str(tmp))
            else:
                path.fs.put_file(obj.path, tmp.path)
        else:
            raise TypeError(
                f"ParquetIOManager stores pyarrow Tables or StagedParquet, not {type(obj)}"
            )
        tmp.rename(path)

    def load_from_path(self, context: InputContext, path: UPath) -> ParquetFile:
        return ParquetFile(path)

    def partition_path(self, asset_key: AssetKey, partition: str) -> UPath:
        """Where this IO manager keeps one partition of an asset (as handle_output does)."""
        asset_path = self._base_path.joinpath(*asset_key.path)
        return self._with_extension(self.make_safe_partition_path(asset_path, partition))

    def read_partition(self, asset_key: AssetKey, partition: str) -> pa.Table | None:
        """An asset's stored partition outside its own inputs (e.g. a previous state)."""
        path = self.partition_path(asset_key, partition)
        return ParquetFile(path).read() if path.exists() else None

    def store_partition(
        self, asset_key: AssetKey, partition: str, table: pa.Table | StagedParquet
    ) -> str:
        """A partition stored outside the asset's own output (a batch step, dead letters);
        returns where it went."""
        path = self.partition_path(asset_key, partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._replace(path, table)
        return str(path)

    def withdraw_partition(self, asset_key: AssetKey, partition: str) -> None:
        """Remove a stored partition whose content is about to stop being true."""
        path = self.partition_path(asset_key, partition)
        if path.exists():
            path.unlink()

    def forget_partition(self, asset_keys: list[AssetKey], partition: str) -> None:
        """Every file kept for a partition of these assets, and the folders left empty by it
        (a key "group/project" is a folder per group): nothing of it stays."""
        for asset_key in asset_keys:
            self.withdraw_partition(asset_key, partition)
            path = self.partition_path(asset_key, partition)
            top = self._base_path.joinpath(*asset_key.path)
            folder = path.parent
            while folder != top and str(folder).startswith(str(top)):
                try:
                    if folder.exists() and not any(folder.iterdir()):
                        folder.rmdir()
                except OSError:  # not empty after all, or an object store without folders
                    break
                folder = folder.parent


def default_storage_url() -> str:
    home = os.environ.get("DAGSTER_HOME")
    return os.path.join(home, "parquet") if home else os.path.abspath(".dagster_storage/parquet")


class ParquetIOManager(ConfigurableIOManagerFactory):
    """Assets as Parquet under base_path (a folder, or any fsspec URL such as s3://bucket/x)."""

    base_path: str = Field(default_factory=default_storage_url)
    storage_options: dict[str, Any] = Field(default_factory=dict)

    def create_io_manager(self, context: Any) -> ParquetStore:
        return ParquetStore(base_path=UPath(self.base_path, **self.storage_options))
