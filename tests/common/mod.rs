pub use cf_access_testkit::*;
