from pathlib import Path

from pydantic import BaseModel, Field

from services.audit.signing import KEY_FILE_NAME
from storeops.settings import Settings


class AuditConfig(BaseModel):
    port: int = 8005
    checkpoint_every: int = Field(default=1000, ge=1, description=(
        "A chain is signed (a checkpoint) once this many entries are past its last checkpoint"))
    checkpoint_seconds: float = Field(default=3600, gt=0, description=(
        "...or once its last checkpoint is this old and entries came after it, whichever comes first"))
    signing_key_file: Path | None = Field(default=None, description=(
        f"The Ed25519 key checkpoints are signed with, outside the database; default <data dir>/{KEY_FILE_NAME}, "
        "created with mode 0600 on first use, its public half written next to it (.pub)"))
    retention_days: float | None = Field(default=None, gt=0, description=(
        "Entries kept longer than this are written to an archive file, then removed, a checkpoint at a time "
        "(the chain verifies from the checkpoint that follows); default: keep everything"))
    archive_dir: Path | None = Field(default=None, description="Where retention writes its archives; default "
                                     "<data dir>/audit-archive")
    retention_check_seconds: float = Field(default=3600, gt=0, description="How often retention looks for entries past it")


class AuditSettings(Settings):
    audit: AuditConfig = Field(default_factory=AuditConfig)

    def signing_key_file(self) -> Path:
        return self.audit.signing_key_file or self.data_dir / KEY_FILE_NAME

    def archive_dir(self) -> Path:
        return self.audit.archive_dir or self.data_dir / "audit-archive"


def audit_settings(settings: Settings) -> AuditSettings:
    """A runtime's settings as the audit service's own (``Runtime.settings`` is typed as the platform's part only)."""
    assert isinstance(settings, AuditSettings)  # the service runs on its SPEC's settings
    return settings
