from storeops.auth.tokens import metadata
from storeops.migrations_env import run

run(metadata)
