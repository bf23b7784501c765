"""Helpers shared by the tests: real peers (Orthanc, the node process, dcmtk) and polling."""
