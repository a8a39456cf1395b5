"""Validated configuration of a federated twin run and of a site (pydantic, closed, frozen).

The coordinator sends :class:`RunConfig` to every site as canonical JSON inside the train
message; a site re-validates it (unknown keys are errors) before doing anything with it.
:class:`SiteConfig` never leaves the site.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NewType

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedtwin.errors import ConfigError
from fedtwin.privacy import AccountantKind, DpSgdConfig
from fedtwin.twins import GlucoseTwinConfig

SiteId = NewType("SiteId", str)

SITE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class CentralDpConfig(BaseModel):
    """Optional site-level DP at the coordinator (Flower's server-side fixed clipping).

    Each site's model update is clipped to ``clipping_norm`` and Gaussian noise of standard
    deviation ``noise_multiplier · clipping_norm / sites`` is added to their average. It
    protects whole *sites*; it adds to, never replaces, every site's patient-level DP.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_multiplier: float = Field(gt=0, le=100)
    clipping_norm: float = Field(gt=0, le=1000)


class RunConfig(BaseModel):
    """What the coordinator asks every site to do in one federated run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_id: str = Field("fedtwin-demo", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    num_rounds: int = Field(5, ge=1, le=1000)
    min_sites: int = Field(3, ge=1, le=1000, description="sites needed to start a round")
    twin: GlucoseTwinConfig = GlucoseTwinConfig()
    dp: DpSgdConfig = DpSgdConfig()
    delta: float = Field(1e-5, gt=0, lt=1)
    seed: int = Field(0, ge=0)
    round_timeout_s: float = Field(600.0, gt=0)
    max_update_norm: float = Field(50.0, gt=0, description="coordinator rejects larger updates")
    eval_stride_steps: int = Field(3, ge=1, le=288)
    central_dp: CentralDpConfig | None = None

    def to_json(self) -> str:
        """Compact JSON with sorted keys (what travels in the train message)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Parse and validate, turning any problem into one :class:`ConfigError` line."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as error:
            raise ConfigError(f"run config: {one_line(error)}") from error


class SiteConfig(BaseModel):
    """A site's own settings: where its data and state live and what it will spend."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: SiteId = Field(pattern=SITE_ID_PATTERN)
    data_dir: Path = Field(description="holds train.safetensors and heldout.safetensors")
    state_dir: Path = Field(description="privacy ledger and site-local state")
    epsilon_cap: float = Field(8.0, gt=0, le=100, description="max ε per patient, ever")
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: AccountantKind = AccountantKind.PRV
    seed: int = Field(0, ge=0)
    min_training_patients: int = Field(10, ge=1)
    min_heldout_patients: int = Field(
        3, ge=1, description="never report evaluation metrics over fewer patients"
    )

    @property
    def ledger_path(self) -> Path:
        """The site's privacy ledger (SQLite)."""
        return self.state_dir / "privacy-ledger.sqlite"


def one_line(error: ValidationError) -> str:
    """Render a pydantic error as one line naming the field and what is allowed."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "value"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{field}: {first['msg']}{more}"
