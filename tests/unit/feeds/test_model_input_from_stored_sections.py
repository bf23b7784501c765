"""The model reads the sections the feeds stored, and its input for real reports stays what it
was, but for the differences listed here, each with its reason and its old input rebuilt.

Every real report of the shared data goes in through the feeds into a real SQLite file
(:mod:`tests.support.model_input`), is read back as the worker reads it, ``ReportText(row.text,
row.sections)``, and cleaned with the bundled cleaning. Its digest is compared with the digest
of the model input the node computed before (``model_input_digests.txt``, commit 282f621: the
text alone, split again by the model's own heading table and decoded a second time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from models.text import ReportText, TextCleaning
from node.feeds.hl7feed import HL7Feed
from storage.database import Database
from storage.reports import store_report
from storage.schema import Report
from tests.support.model_input import PEER, digest, read_digests, ris_log_messages, store_all

CLEANING = TextCleaning()  # the bundled package's: findings and impression, lower case


def model_input(row: Report) -> str | None:
    return CLEANING(ReportText(row.text, row.sections))


def whole(text: str) -> str:
    """A section's text with the cleaning's other steps: what it adds to a model input."""
    return TextCleaning(sections=())(text)


def section(row: Report, name: str) -> str:
    return ReportText(row.text, row.sections).sections[name]


# Each reason rebuilds the old input from the row and the new input.
def technologist_comment_was_read_as_impression(row: Report, new: str) -> str | None:
    # WashU labels the technologist's comment OBX-3 "&TCM"; it has no heading in the text, so
    # the model, splitting the text alone, read it as the end of the impression. The feed
    # stores it as TECHNIQUE, which the model does not read.
    return f"{new} {whole(section(row, 'TECHNIQUE'))}"


def addendum_heading_was_text(row: Report, new: str) -> str | None:
    # "ADDENDUM:" was in the feed's heading table only: the model read the heading as words of
    # the impression. It is a heading now; the addendum still follows the impression.
    addendum = whole(section(row, "ADDENDUM"))
    return new.replace(addendum, f"addendum: {addendum}")


def labelled_addendum_was_before_any_heading(row: Report, new: str) -> str | None:
    # OBX-3 "&ADT" labels an addendum the RIS put before the report's first heading: text
    # before a heading belonged to no section. From the label, it follows the impression now.
    return new.replace(f" {whole(section(row, 'ADDENDUM'))}", "")


def labelled_impression_had_no_heading(row: Report, new: str) -> str | None:
    # "IMP: ?" is no heading, but OBX-3 "&IMP" says the line is the impression: the text alone
    # had an EXAMINATION heading and no wanted section, so no input at all.
    return None


def column_was_split_again(row: Report, new: str) -> str | None:
    # IU report 2415's impression column holds, after the impression, a second headed copy of
    # the whole report. The feed stores the column as the impression, as the export gave it;
    # the model used to split the composed text again at the headings inside the column.
    return CLEANING(row.text)


EXPLAINED: dict[str, Callable[[Report, str], str | None]] = {
    "hl7:1.2.4.8.16.2": labelled_impression_had_no_heading,
    **dict.fromkeys(
        [
            "hl7:2.25.66092044680927012484208907663249350495",
            "hl7:2.25.235106677769133677247000356584285809348",
            "hl7:2.25.48933133317510490799410617137537740554",
            "hl7:2.25.84532188950465461549435922932617716265",
            "hl7:2.25.8517564923695072524410339422472128015",
            "hl7:2.25.196686564799230509190796819536967807312",
            "hl7:2.25.16492288933534114308398717331567612787",
            "hl7:2.25.156204645978221734568785009608828218471",
            "hl7:2.25.232208116732226784183680646129715951984",
        ],
        technologist_comment_was_read_as_impression,
    ),
    **dict.fromkeys(
        [
            "hl7:2.25.27294531846963388481947318112461449032",
            "hl7:2.25.46922071367648385371960750069272638650",
            "hl7:2.25.274305477702732679987307195323269208292",
            "hl7:2.25.279562864306182853939133746784869784459",
        ],
        addendum_heading_was_text,
    ),
    **dict.fromkeys(
        [
            "hl7:2.25.296178717141651566495466184955661956860",
            "hl7:2.25.219030242254076796773456242659735134587",
            "hl7:2.25.204310474482794041567619032273688214567",
        ],
        labelled_addendum_was_before_any_heading,
    ),
    "csv:IU2415": column_was_split_again,
}


@pytest.fixture(scope="module")
def rows(shared_data, tmp_path_factory) -> Iterator[dict[str, Report]]:
    """Every real report, stored by the feeds in a SQLite file of this module's own."""
    folder = tmp_path_factory.mktemp("model-input")
    database = Database(f"sqlite:///{folder / 'db.sqlite'}")
    database.create_schema()
    yield store_all(shared_data, database, folder / "drop")
    database.dispose()


def test_model_input_of_every_real_report_is_what_it_was_or_differs_as_explained(rows):
    before = read_digests()

    assert rows.keys() == before.keys()  # the feeds store the same 4,679 reports as before
    assert len(rows) == 4679
    changed = {key for key, row in rows.items() if digest(model_input(row)) != before[key]}
    assert changed == EXPLAINED.keys()
    for key, rebuild in EXPLAINED.items():
        row = rows[key]
        assert digest(rebuild(row, model_input(row))) == before[key], key
    # Every CSV row and every HL7 report with headings was stored with its sections: the
    # model split none of them again.
    assert all(row.sections for row in rows.values() if row.source == "csv")


def test_the_technologist_comment_the_feed_labelled_is_left_out_of_the_model_input(rows):
    row = rows["hl7:2.25.66092044680927012484208907663249350495"]  # a WashU mammogram report
    comment = section(row, "TECHNIQUE")
    assert comment.startswith("Patient mentioned slight tenderness during compression")
    assert comment in row.text  # the text keeps it; only the model input leaves it out
    assert whole(comment) not in model_input(row)
    assert whole(comment) in CLEANING(row.text)  # the text split alone ran it into the impression


@pytest.mark.parametrize(
    "stored",
    [
        {"FINDINGS": "Lungs clear.", "IMPRESSION": "No acute disease."},
        {"findings": "Lungs clear.", "impression": "No acute disease."},  # older spelling
        {"Findings": "Lungs clear.", "IMPRESSIONS": "No acute disease."},
    ],
)
def test_stored_sections_are_read_whatever_the_spelling_of_their_keys(db, stored):
    # The text says nothing the splitter would find: only the stored sections can give this.
    text = "Lungs clear.\nNo acute disease.\nPatient cooperative."
    with db.transaction() as session:
        store_report(
            session, source="hl7", message_id="M1", kind="report", text=text, sections=stored
        )
    with db.transaction() as session:
        row = session.scalars(select(Report)).one()
        assert row.sections == stored  # the JSON as written
        assert model_input(row) == "lungs clear. no acute disease."
    assert CLEANING(text) == "lungs clear. no acute disease. patient cooperative."


def test_a_real_hl7_report_is_decoded_once_by_the_feed_and_read_from_its_sections(shared_data, db):
    log = shared_data / "hl7-washu-scout-ris-logs" / "extraction" / "20250814.log"
    escaped = rb"FINDINGS \T\ IMPRESSION:"
    [message] = [m for m in ris_log_messages(log.read_bytes()) if escaped in m]
    HL7Feed(db).handle_frame(message, PEER)

    with db.transaction() as session:
        row = session.scalars(select(Report)).one()
        assert "\nFINDINGS & IMPRESSION:\n" in row.text  # "\T\" decoded by the HL7 codec
        # The heading within the line opens the impression; the words before it stay, once.
        assert row.sections["IMPRESSION"].startswith("FINDINGS & \nThe angiographic examination")
        assert model_input(row).startswith("findings & the angiographic examination reveals")
