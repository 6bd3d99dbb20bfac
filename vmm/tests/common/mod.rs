pub mod tiny_guest;
