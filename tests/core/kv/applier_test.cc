// Placeholder: filled by the applier test-writing helper.
