"""crucible: reusable ML mechanics for TRINITY, independent of the bus, the actors and the schemas.

Modules (import them directly; this package imports nothing heavy on its own):

* :mod:`crucible.safetensors_io` - strictly validated lazy safetensors reads: header only, one tensor,
  a row range of a 2-D tensor, bounded chunks; one typed error per malformation.
* :mod:`crucible.factorization` - bounded-memory thin SVD (TSQR) and the SVF reconstruction
  ``svf-energy-v1``.
* :mod:`crucible.factor_cache` - SVD factors of a base model's adapted matrices, computed once and cached
  on disk keyed by the weights' hash.
* :mod:`crucible.router_vector` - load the TRINITY vector (.npy / .safetensors) and split it into the
  nine SVF offset blocks and the {10, 1024} routing head.
* :mod:`crucible.dtype_policy` - compute dtype and the single-rounding cast back to the target dtype.
* :mod:`crucible.tensor_patch` - validated parameter paths, in-place patches with receipts, tied weights.
* :mod:`crucible.svf_patch` - apply an SVF adapter to a model or state dict with explicit tied-weight policy.
* :mod:`crucible.hashing` - sha256 of files and tensor bytes.
* :mod:`crucible.errors` - every error class raised here.
* :mod:`crucible.world` - the offline world: the generated task suite with exact graders, and the country
  facts the knowledge agent serves (see its docstring).
"""
