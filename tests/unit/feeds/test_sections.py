"""Report sections from headings in the text and from OBX labels."""

from __future__ import annotations

import pytest

from models.text import extract_sections
from node.feeds.sections import detect_sections, section_for_observation


def lines(text: str, hint: str | None = None):
    return [(line, hint) for line in text.split("\n")]


def test_headings_at_line_start_in_any_case_and_inline_in_upper_case():
    text = "Clinical history: cough.\nFindings: no focal opacity. IMPRESSION: Normal chest."
    assert detect_sections(lines(text)) == {
        "INDICATION": "cough.",
        "FINDINGS": "no focal opacity.",
        "IMPRESSION": "Normal chest.",
    }


def test_lower_case_words_with_a_colon_inside_prose_are_not_headings():
    text = "FINDINGS: The prior findings: unchanged."
    assert detect_sections(lines(text)) == {"FINDINGS": "The prior findings: unchanged."}


def test_a_heading_alone_on_its_line_opens_a_section():
    text = "IMPRESSION\nNo acute disease.\n\nCOMPARISON: None."
    assert detect_sections(lines(text)) == {
        "IMPRESSION": "No acute disease.",
        "COMPARISON": "None.",
    }


def test_text_before_any_section_belongs_to_none():
    assert detect_sections(lines("Dr. Smith\n****FINAL REPORT****")) == {}


def test_obx_labels_open_sections_and_text_headings_override_them():
    report = lines("EXAMINATION: Chest 1 view", "FINDINGS") + lines("Lungs clear.", "FINDINGS")
    report += lines("IMPRESSION:", "IMPRESSION") + lines("Normal.", "IMPRESSION")
    report += lines("Patient cooperative.", "TECHNIQUE")
    assert detect_sections(report) == {
        "EXAMINATION": "Chest 1 view\nLungs clear.",
        "IMPRESSION": "Normal.",
        "TECHNIQUE": "Patient cooperative.",
    }


def test_observation_identifiers_name_sections():
    assert section_for_observation(["", "GDT"]) == "FINDINGS"
    assert section_for_observation(["IMG2347", "IMP"]) == "IMPRESSION"
    assert section_for_observation(["19005-8", "Impression", "LN"]) == "IMPRESSION"
    assert section_for_observation(["", "Findings"]) == "FINDINGS"
    assert section_for_observation(["3750492"]) is None


def test_words_before_a_heading_within_a_line_stay_in_their_section_without_the_heading():
    # WashU's "FINDINGS AND IMPRESSION:" line: once the words before the inline heading were
    # stored with the heading and the rest of the line a second time.
    report = lines("IMPRESSION:\nFINDINGS AND IMPRESSION:\nNo malignancy.")
    assert detect_sections(report) == {"IMPRESSION": "FINDINGS AND \nNo malignancy."}


@pytest.mark.parametrize(
    ("heading", "section"),
    [
        # Known before to the feed only...
        ("CLINICAL INDICATIONS", "INDICATION"),
        ("CLINICAL INFORMATION", "INDICATION"),
        ("REASON FOR STUDY", "INDICATION"),
        ("ADDENDUM", "ADDENDUM"),
        # ...and to both.
        ("FINDINGS", "FINDINGS"),
        ("CONCLUSIONS", "IMPRESSION"),
        ("Reason for examination", "INDICATION"),
        ("PROCEDURE", "EXAMINATION"),
    ],
)
def test_the_feed_and_the_model_split_at_the_same_headings(heading, section):
    text = f"{heading}: the text under it\nCOMPARISON: none"
    expected = {section: "the text under it", "COMPARISON": "none"}
    assert detect_sections(lines(text)) == expected
    assert extract_sections(text) == expected
    assert section_for_observation(["", heading]) == section
