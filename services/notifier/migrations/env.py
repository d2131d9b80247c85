from services.notifier.store import Base
from storeops.migrations_env import run

run(Base.metadata)
