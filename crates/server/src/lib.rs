//! Evergreen server daemon — arrives with its own issue (see ARCHITECTURE.md).
