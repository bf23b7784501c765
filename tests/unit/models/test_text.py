"""Report text cleaning: the same text, the same way, in training and serving."""

from __future__ import annotations

import pytest

from models.hl7_escapes import decode_hl7_escapes
from models.preprocess import clean_report_text as reexported
from models.text import (
    ReportText,
    TextCleaning,
    clean_report_text,
    compose_report,
    extract_sections,
    label_mask_words,
)

IU_REPORT = (
    "EXAMINATION: Xray Chest PA and Lateral\n"
    "INDICATION: Positive TB test\n"
    "COMPARISON: None.\n"
    "FINDINGS: The cardiac silhouette and mediastinum size are within normal limits. There are "
    "no XXXX of a pleural effusion.\n"
    "IMPRESSION: Normal chest x-XXXX."
)


def test_the_old_call_still_works_and_is_the_one_preprocess_exports():
    assert reexported is clean_report_text
    assert clean_report_text("  No acute   disease. ") == "no acute disease."
    assert clean_report_text(None) is None
    assert clean_report_text(" \n\t ") is None


def test_findings_and_impression_are_kept_in_that_order_without_headings():
    cleaned = clean_report_text(IU_REPORT)
    assert cleaned == (
        "the cardiac silhouette and mediastinum size are within normal limits. there are no "
        "xxxx of a pleural effusion. normal chest x-xxxx."
    )
    assert "indication" not in cleaned and "tb test" not in cleaned


def test_sections_are_configurable_and_empty_keeps_everything():
    assert clean_report_text(IU_REPORT, sections=("indication",)) == "positive tb test"
    whole = clean_report_text(IU_REPORT, sections=())
    assert whole.startswith("examination: xray chest") and whole.endswith("x-xxxx.")
    impression_first = clean_report_text(IU_REPORT, sections=("impression", "findings"))
    assert impression_first.startswith("normal chest x-xxxx.")


def test_text_without_headings_is_kept_whole_and_headed_text_without_wanted_sections_is_none():
    assert clean_report_text("Cough and fever for 3 days") == "cough and fever for 3 days"
    assert clean_report_text("INDICATION: cough\nCOMPARISON: none") is None


def test_lowercase_prose_with_a_colon_is_not_a_heading():
    text = "FINDINGS: No acute findings: lungs clear."
    assert clean_report_text(text) == "no acute findings: lungs clear."
    assert extract_sections("Impression:\nclear lungs") == {"IMPRESSION": "clear lungs"}


def test_deidentification_runs_become_one_token():
    text = "Heart size XXXX. Inferior XXXX XXXX XXXX. XXXX-year-old XXXX."
    assert clean_report_text(text) == "heart size xxxx. inferior xxxx. xxxx-year-old xxxx."


def test_hl7_escapes_decoded_where_the_text_is_read_give_the_input_the_cleaning_once_gave():
    raw = r"FINDINGS: Lungs clear.\.br\IMPRESSION: No acute disease \T\ stable\X0D\\X0A\ok"
    assert clean_report_text(decode_hl7_escapes(raw)) == "lungs clear. no acute disease & stable ok"


def test_the_cleaning_does_not_decode_hl7_escapes_a_second_time():
    # What a feed already decoded: "\E\T\E\" arrived, the backslashes are the report's own.
    assert clean_report_text(r"FINDINGS: ratio 1\T\2 on the scale") == r"ratio 1\t\2 on the scale"


def test_label_words_are_masked_as_whole_words_only():
    text = "FINDINGS: Abnormal heart. Normal lungs, normally aerated. Pleural effusion."
    masked = clean_report_text(text, mask_label_words=["normal", "abnormal", "Pleural_Effusion"])
    assert masked == "heart. lungs, normally aerated. ."
    assert clean_report_text("IMPRESSION: Normal.", mask_label_words=["normal"]) is None


def test_case_can_be_kept_for_cased_encoders():
    assert clean_report_text("FINDINGS: Mild CHF", lowercase=False) == "Mild CHF"


def test_cleaning_options_round_trip_and_validate():
    cleaning = TextCleaning(sections=("impression",), mask_words=("normal",), lowercase=False)
    assert TextCleaning.from_dict(cleaning.to_dict()) == cleaning
    assert cleaning("IMPRESSION: Normal Heart") == "Heart"
    with pytest.raises(ValueError, match="unknown report sections"):
        TextCleaning(sections=("summary",))
    with pytest.raises(ValueError, match="unknown text cleaning keys"):
        TextCleaning.from_dict({"stem": True})


def test_csv_columns_compose_into_the_same_input_a_feed_report_gives():
    composed = compose_report({"findings": "Clear lungs.", "impression": None})
    assert composed == "FINDINGS: Clear lungs."
    assert clean_report_text(composed) == clean_report_text("FINDINGS:\n  Clear lungs.")


def test_label_mask_words_come_from_label_names():
    assert label_mask_words(["Pleural_Thickening", "Abnormal"], ["normal", "abnormal"]) == (
        "pleural thickening",
        "abnormal",
        "normal",
    )


def test_stored_sections_are_selected_from_and_not_found_again():
    # The sender labelled the lines (HL7 OBX-3); the text alone has no heading.
    report = ReportText(
        "Lungs clear.\nNo acute disease.\nPatient cooperative.",
        {"FINDINGS": "Lungs clear.", "IMPRESSION": "No acute disease.", "TECHNIQUE": "Patient"},
    )
    assert clean_report_text(report) == "lungs clear. no acute disease."
    assert clean_report_text(report.text) == "lungs clear. no acute disease. patient cooperative."
    assert clean_report_text(report, sections=("impression", "findings")) == (
        "no acute disease. lungs clear."
    )
    assert clean_report_text(ReportText("Lungs clear.", {"COMPARISON": "None."})) is None


def test_text_without_stored_sections_is_split_once_here():
    assert clean_report_text(ReportText(IU_REPORT)) == clean_report_text(IU_REPORT)
    assert clean_report_text(ReportText(IU_REPORT, {})) == clean_report_text(IU_REPORT)


def test_a_stored_section_that_is_the_whole_text_is_kept_whole_like_text_without_headings():
    # An order's indication: the HL7 feed stores its text as the INDICATION section.
    order = ReportText("Cough and fever for 3 days", {"INDICATION": "Cough and fever for 3 days"})
    assert clean_report_text(order) == "cough and fever for 3 days"


def test_an_addendum_follows_the_impression_it_amends():
    report = ReportText(
        "FINDINGS: Clear.\nIMPRESSION: Normal.\nADDENDUM: Small effusion on the left.",
        {"FINDINGS": "Clear.", "IMPRESSION": "Normal.", "ADDENDUM": "Small effusion on the left."},
    )
    assert clean_report_text(report) == "clear. normal. small effusion on the left."
    assert clean_report_text(report, sections=("addendum",)) == "small effusion on the left."
    assert clean_report_text(report, sections=("findings",)) == "clear."


def test_section_names_are_read_in_any_spelling():
    assert ReportText("x", {"findings": "a", "Findings": "b", "Impressions": "c"}).sections == {
        "FINDINGS": "a\nb",
        "IMPRESSION": "c",
    }
    # Packages written before the names were upper case say "findings".
    old_package = TextCleaning.from_dict({"sections": ["findings", "impression"]})
    assert old_package == TextCleaning()
    assert old_package.to_dict()["sections"] == ["FINDINGS", "IMPRESSION"]
