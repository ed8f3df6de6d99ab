"""Writers of a stage's output in other toolkits' formats (`sylm-data export`)."""
