"""Model registry: artifact pins, manifests, verified fetch (Hugging Face Hub or a local folder), cache, lineage.

Modules:

* :mod:`.pins` — load/build/write ``ArtifactPin`` and ``SakanaManifest`` files;
* :mod:`.paths` — pinned paths must stay inside the artifact (no ``..``, absolute paths, symlink escapes);
* :mod:`.verify` — re-hash a folder against a pin;
* :mod:`.store` — :class:`~.store.ArtifactStore` with :class:`~.store.HubSource` / :class:`~.store.LocalSource`:
  every file verified by sha256 before use, offline mode served from verified copies only;
* :mod:`.lineage` — which pin and base model produced which adapter export (JSON records beside the cache);
* :mod:`.export` — write the adapted bundle (SVF-adapted matrices + head + manifest + pin);
* :mod:`.adapter` — apply a TRINITY vector's SVF offsets to a loaded routing backbone;
* :mod:`.errors` — one exception per failure kind.
"""
