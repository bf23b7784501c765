"""The running cxrnode service and its edges: DICOM, report feeds, scheduler, worker, results."""
