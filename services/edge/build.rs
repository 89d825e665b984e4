//! The edge embeds the widget bundle and the demo page (`include_str!`). They live outside
//! this package, where rustc records them by absolute path; with one build cache shared by
//! several checkouts (CI clones) that path can be another checkout's. Watching them by a
//! relative path makes every checkout rebuild the edge when its own files change.

fn main() {
    println!("cargo::rerun-if-changed=../../widget/dist/widget.js");
    println!("cargo::rerun-if-changed=../../widget/dist/widget-chat.js");
    println!("cargo::rerun-if-changed=../../widget/demo/index.html");
}
