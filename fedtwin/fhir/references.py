"""Patient references: how a resource names its patient, read one exact way.

Invariant: a reference resolves to a local patient id only in the documented forms,
``Patient/<id>`` (optionally with ``/_history/<v>``, optionally after an ``http(s)://`` server
base, as some Bulk servers write absolute references) and ``urn:uuid:<id>`` (exporters that
write bundle-style references); the id then resolves only when a Patient with that id is in the
same export. Anything else (other resource types, contained ``#`` references) is not a patient.
"""

from __future__ import annotations

import re

_PATIENT_REF = re.compile(
    r"(?:https?://[^\s/]+(?:/[^\s/]+)*/)?Patient/([A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)
_URN_UUID = re.compile(r"urn:uuid:([0-9a-fA-F\-]{36})")


def patient_id_of(reference: object) -> str | None:
    """Local patient id named by a reference string, or ``None`` if it names no patient.

    Parameters
    ----------
    reference : object
        The ``reference`` element of a FHIR Reference (any JSON value).

    Returns
    -------
    str or None
        ``<id>`` of ``Patient/<id>`` or ``urn:uuid:<id>``.
    """
    if not isinstance(reference, str):
        return None
    matched = _PATIENT_REF.fullmatch(reference) or _URN_UUID.fullmatch(reference)
    return matched.group(1) if matched else None
