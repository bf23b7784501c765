"""The audit log's vocabulary: every action the node records, ``<subject>.<verb>``.

An action is stored as its string value, so the names here are the ones existing audit rows,
the admin's filters (``--action hl7.`` or ``?action=result.sent``) and the README already use;
renaming a member's value is a migration of the audit log, not a refactoring. A subject is
the family an admin filters by: ``Subject.HL7.prefix`` is the filter ``hl7.`` matches.
"""

from __future__ import annotations

from enum import StrEnum


class Subject(StrEnum):
    """What an action is about: the part of its name before the dot."""

    ADMIN = "admin"
    ASSOCIATION = "association"
    CSV = "csv"
    DATABASE = "database"
    DICOMWEB = "dicomweb"
    HL7 = "hl7"
    IMAGE = "image"
    INFERENCE = "inference"
    INSTANCE = "instance"
    JOB = "job"
    MODEL = "model"
    NODE = "node"
    PAIRING = "pairing"
    RESULT = "result"
    STUDY = "study"
    WORKER = "worker"

    @property
    def prefix(self) -> str:
        """The name prefix that selects every action of this subject (``"hl7."``)."""
        return f"{self.value}."


class Action(StrEnum):
    """One step the node audits; a member's name is its subject and verb (``HL7_RECEIVED``)."""

    # A DICOM sender's instances, as the receiver stores (or refuses) them.
    INSTANCE_RECEIVED = "instance.received"
    INSTANCE_DUPLICATE = "instance.duplicate"
    INSTANCE_REFUSED = "instance.refused"
    INSTANCE_SKIPPED = "instance.skipped"  # stored, but not a model input
    INSTANCE_RECOVERED = "instance.recovered"  # found in the spool after a database loss

    # A study's way through the node.
    STUDY_COMPLETE = "study.complete"  # its sender released the association
    STUDY_AWAITING_REPORT = "study.awaiting_report"
    STUDY_QUEUED = "study.queued"
    STUDY_SKIPPED = "study.skipped"
    STUDY_DONE = "study.done"  # every result of a run confirmed by the destination
    STUDY_PURGED = "study.purged"
    STUDY_ASSEMBLY_FAILED = "study.assembly_failed"  # its round rolled back, the others went on

    # Reports and studies paired (or not).
    PAIRING_PAIRED = "pairing.paired"
    PAIRING_REFUSED = "pairing.refused"
    PAIRING_NO_RERUN = "pairing.no_rerun"
    PAIRING_WINDOW_EXPIRED = "pairing.window_expired"

    # A run: its jobs, the worker taking them, its images and the model's answer.
    JOB_FAILED = "job.failed"
    JOB_DEFERRED = "job.deferred"
    JOB_REQUEUED = "job.requeued"
    WORKER_PAUSED = "worker.paused"
    WORKER_RESUMED = "worker.resumed"
    IMAGE_SKIPPED = "image.skipped"
    IMAGE_UNREADABLE = "image.unreadable"
    INFERENCE_COMPLETED = "inference.completed"

    # The objects a run writes back to the PACS.
    RESULT_SENT = "result.sent"
    RESULT_SEND_FAILED = "result.send_failed"
    RESULT_ABANDONED = "result.abandoned"
    RESULT_PURGED = "result.purged"
    RESULT_RESEND_REQUESTED = "result.resend_requested"  # an admin put results back in the outbox

    # Report text over HL7 v2 (MLLP).
    HL7_RECEIVED = "hl7.received"
    HL7_DUPLICATE = "hl7.duplicate"
    HL7_REJECTED = "hl7.rejected"  # answered AR
    HL7_UNUSABLE = "hl7.unusable"  # answered AE
    HL7_CONNECTION_REFUSED = "hl7.connection_refused"
    HL7_TLS_FAILED = "hl7.tls_failed"
    HL7_FRAME_UNTERMINATED = "hl7.frame_unterminated"

    # Report text from a watched CSV folder.
    CSV_RECEIVED = "csv.received"
    CSV_DUPLICATE = "csv.duplicate"
    CSV_ROW_REJECTED = "csv.row_rejected"
    CSV_FILE_DONE = "csv.file_done"
    CSV_FILE_REJECTED = "csv.file_rejected"
    CSV_FILE_FAILED = "csv.file_failed"
    CSV_FOLDER_UNUSABLE = "csv.folder_unusable"

    # DICOM associations refused or cut short.
    ASSOCIATION_REJECTED = "association.rejected"
    ASSOCIATION_TLS_FAILED = "association.tls_failed"
    ASSOCIATION_PDU_TIMEOUT = "association.pdu_timeout"
    ASSOCIATION_PDU_TOO_LARGE = "association.pdu_too_large"
    ASSOCIATION_MESSAGE_TIMEOUT = "association.message_timeout"

    # The STOW-RS endpoint's refused requests (its instances are audited as instance.*).
    DICOMWEB_AUTH_FAILED = "dicomweb.auth_failed"

    # What an admin did or was refused.
    ADMIN_QUERY = "admin.query"
    ADMIN_SIMILAR = "admin.similar"  # a study's similar earlier cases, and which were named
    ADMIN_VERIFY = "admin.verify"
    ADMIN_AUTH_FAILED = "admin.auth_failed"

    # The node itself, its database and its model packages.
    NODE_STARTED = "node.started"
    NODE_STOPPED = "node.stopped"
    DATABASE_LOSS_DETECTED = "database.loss_detected"
    MODEL_IMPORTED = "model.imported"
    MODEL_PREDICTED = "model.predicted"  # a model tried on a file outside the PACS flow

    @property
    def subject(self) -> Subject:
        """The family this action belongs to (``Subject.HL7`` for ``hl7.received``)."""
        return Subject(self.value.partition(".")[0])
