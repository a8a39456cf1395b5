"""Patient references: how a resource names its patient, read one exact way.

Invariant: a reference resolves to a local patient id only in the two documented forms,
``Patient/<id>`` (optionally with ``/_history/<v>``) and ``urn:uuid:<id>`` (Bulk exporters that
write bundle-style references; it resolves only when a Patient with that id exists). Anything
else (absolute URLs, other resource types, contained ``#`` references) is not a patient.
"""

from __future__ import annotations

import re

_PATIENT_REF = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")
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
