"""The composition root: the ``storeops`` command, the stack runner, the broker
launcher, the demo store and the benchmarks. The only package that imports
``services``; the platform (``storeops``) never does."""
