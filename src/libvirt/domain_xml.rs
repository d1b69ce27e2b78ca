//! libvirt domain XML: enrollment edits and the hook's decision.
//!
//! Edits splice the document at the byte spans quick-xml reports, so
//! everything xftrace does not touch stays byte-for-byte as it was. What
//! enrollment changes, and `unenroll` puts back:
//! - `<memoryBacking>` gets `<source type='file'/>`, `<access mode='shared'/>`
//!   and `<allocation mode='immediate'/>` (and loses `<discard/>`, which
//!   would punch holes in the file), keeping other children;
//! - `<memballoon model='none'/>`: a balloon returns pages to the host by
//!   punching holes in the RAM file;
//! - `<metadata>` gets an `xftrace:enrollment` element recording the guest
//!   kernel's System.map and the previous memory backing and balloon.
//!
//! The document is written by whoever may define domains, and the hook
//! reads it as root while libvirt waits, so what reading it costs is
//! bounded by its size alone: at most [`MAX_BYTES`], [`MAX_DEPTH`] levels
//! and [`MAX_ELEMENTS`] elements, one fixed-size index entry per element of
//! the four levels xftrace reads (nothing deeper is kept), attribute names
//! checked for duplicates in linear time. The hook first looks for the
//! enrollment alone ([`may_be_enrolled`]), keeping nothing, and indexes
//! only enrolled domains.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashSet;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Namespace of xftrace's domain metadata.
pub const NAMESPACE: &str = "http://xftrace.invalid/ns/enrollment/1";
pub const PREFIX: &str = "xftrace";

/// The largest domain XML read. libvirt's own are rarely above a few tens
/// of kilobytes.
pub const MAX_BYTES: usize = 16 << 20;
/// The deepest nesting accepted: libxml2, which libvirt parses domain XML
/// with, refuses deeper documents unless told otherwise.
pub const MAX_DEPTH: usize = 256;
/// The most elements accepted: a domain with hundreds of devices has a few
/// thousand. Bounds the index below what [`MAX_BYTES`] alone would allow.
pub const MAX_ELEMENTS: usize = 1 << 20;
/// Levels of elements kept in the index: nothing xftrace reads is deeper
/// than `/domain/metadata/xftrace:enrollment/xftrace:system-map`.
const KEPT_LEVELS: usize = 4;

/// One element of the index: spans only, names and attributes are read
/// from the document when asked for. Offsets are `u32`s ([`MAX_BYTES`]
/// fits), so an entry is 32 bytes.
#[derive(Clone, Debug)]
struct Node {
    /// The enclosing element's index in the index (`None` for a root).
    parent: Option<u32>,
    /// Length of the qualified name, which starts after the `<`.
    name_len: u32,
    start: u32,
    end: u32,
    /// Byte span of the content, for non-empty elements.
    inner: Option<(u32, u32)>,
}

impl Node {
    fn parent(&self) -> Option<usize> {
        self.parent.map(wide)
    }
    fn start(&self) -> usize {
        wide(self.start)
    }
    fn end(&self) -> usize {
        wide(self.end)
    }
    fn inner(&self) -> Option<(usize, usize)> {
        self.inner.map(|(a, b)| (wide(a), wide(b)))
    }
}

fn wide(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// An offset or length within a document of at most [`MAX_BYTES`].
fn narrow(v: usize) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("the domain XML is larger than {MAX_BYTES} bytes"))
}

/// The part of a qualified name after its prefix.
fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

/// Whether an element declares xftrace's namespace.
fn declares_namespace(e: &BytesStart) -> bool {
    e.attributes().with_checks(false).flatten().any(|a| {
        a.key.as_ref().starts_with(b"xmlns") && a.unescape_value().is_ok_and(|v| v == NAMESPACE)
    })
}

/// Check an element's attributes as quick-xml's default iteration would,
/// but with duplicate names found through a hash set: quick-xml's own check
/// compares each name with every earlier one, quadratic in the attributes
/// of a tag (12 s for a 1 MiB one).
fn check_attributes(e: &BytesStart) -> Result<(), String> {
    let mut seen = HashSet::new();
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(|e| format!("bad attribute: {e}"))?;
        if !seen.insert(a.key.0) {
            return Err(format!(
                "bad attribute: {} appears twice in one element",
                String::from_utf8_lossy(a.key.0)
            ));
        }
        a.unescape_value()
            .map_err(|e| format!("bad attribute value: {e}"))?;
    }
    Ok(())
}

fn too_large(xml: &str) -> Option<String> {
    (xml.len() > MAX_BYTES).then(|| {
        format!(
            "the domain XML is {} bytes, more than the {MAX_BYTES} xftrace reads",
            xml.len()
        )
    })
}

fn too_deep() -> String {
    format!("the domain XML nests elements deeper than {MAX_DEPTH} levels")
}

fn too_many() -> String {
    format!("the domain XML has more than {MAX_ELEMENTS} elements")
}

/// A domain XML with its element index.
struct Doc<'a> {
    xml: &'a str,
    nodes: Vec<Node>,
}

impl<'a> Doc<'a> {
    fn parse(xml: &'a str) -> Result<Self, String> {
        if let Some(e) = too_large(xml) {
            return Err(e);
        }
        let mut r = Reader::from_str(xml);
        r.config_mut().trim_text(false);
        let mut nodes: Vec<Node> = Vec::new();
        // Each open element's index, if it is kept.
        let mut open: Vec<Option<u32>> = Vec::new();
        let mut elements = 0usize;
        // quick-xml skips a byte order mark without counting it.
        let skipped = if xml.starts_with('\u{feff}') {
            '\u{feff}'.len_utf8()
        } else {
            0
        };
        let at = |pos: u64| {
            usize::try_from(pos)
                .ok()
                .and_then(|p| p.checked_add(skipped))
                .unwrap_or(usize::MAX)
        };
        loop {
            let before = at(r.buffer_position());
            let ev = r
                .read_event()
                .map_err(|e| format!("not well-formed XML at byte {}: {e}", r.error_position()))?;
            let after = at(r.buffer_position());
            // Every span is sliced later: it must fall on characters.
            if !xml.is_char_boundary(before) || !xml.is_char_boundary(after) || after < before {
                return Err(format!("not well-formed XML at byte {before}"));
            }
            match ev {
                Event::Start(e) | Event::Empty(e) => {
                    if open.len() >= MAX_DEPTH {
                        return Err(too_deep());
                    }
                    elements = elements.saturating_add(1);
                    if elements > MAX_ELEMENTS {
                        return Err(too_many());
                    }
                    check_attributes(&e)?;
                    let empty = xml[before..after].trim_end().ends_with("/>");
                    let mut kept = None;
                    if open.len() < KEPT_LEVELS {
                        let at = narrow(after)?;
                        kept = Some(narrow(nodes.len())?);
                        nodes.push(Node {
                            parent: open.last().copied().flatten(),
                            name_len: narrow(e.name().as_ref().len())?,
                            start: narrow(before)?,
                            end: at,
                            inner: (!empty).then_some((at, at)),
                        });
                    }
                    if !empty {
                        open.push(kept);
                    }
                }
                Event::End(_) => {
                    let kept = open.pop().ok_or("unbalanced end tag")?;
                    if let Some(n) = kept.and_then(|i| nodes.get_mut(wide(i))) {
                        n.end = narrow(after)?;
                        let close = narrow(before)?;
                        n.inner = n.inner.map(|(a, _)| (a, close));
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if !open.is_empty() {
            return Err("unclosed element".into());
        }
        Ok(Doc { xml, nodes })
    }

    fn name(&self, n: &Node) -> &'a str {
        self.xml
            .get(n.start().saturating_add(1)..)
            .and_then(|s| s.get(..wide(n.name_len)))
            .unwrap_or("")
    }

    /// The element's start tag, parsed again (its attributes were checked
    /// when the index was built).
    fn tag(&self, n: &Node) -> Option<BytesStart<'a>> {
        let end = n.inner().map_or(n.end(), |(a, _)| a);
        match Reader::from_str(self.xml.get(n.start()..end)?).read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) => Some(e),
            _ => None,
        }
    }

    fn attr(&self, n: &Node, name: &str) -> Option<String> {
        let tag = self.tag(n)?;
        let a = tag
            .attributes()
            .with_checks(false)
            .flatten()
            .find(|a| a.key.as_ref() == name.as_bytes())?;
        a.unescape_value().ok().map(|v| v.into_owned())
    }

    /// Whether `n`'s path from its root is `path`.
    fn is(&self, n: &Node, path: &[&str]) -> bool {
        let mut at = Some(n);
        for want in path.iter().rev() {
            match at {
                Some(m) if self.name(m) == *want => at = m.parent().and_then(|p| self.nodes.get(p)),
                _ => return false,
            }
        }
        // The walk must have ended at a root.
        at.is_none()
    }

    /// How many elements enclose `n`.
    fn level(&self, n: &Node) -> usize {
        let mut level = 0usize;
        let mut at = n.parent().and_then(|p| self.nodes.get(p));
        while let Some(m) = at {
            level = level.saturating_add(1);
            at = m.parent().and_then(|p| self.nodes.get(p));
        }
        level
    }

    fn find(&self, path: &[&str]) -> Option<&Node> {
        self.nodes.iter().find(|n| self.is(n, path))
    }

    /// The elements `parent` encloses directly (all are kept: no query
    /// asks for those of a kept element's that are not).
    fn children<'d>(&'d self, parent: &'d Node) -> impl Iterator<Item = &'d Node> + 'd {
        self.nodes.iter().filter(move |n| {
            n.parent()
                .and_then(|p| self.nodes.get(p))
                .is_some_and(|p| std::ptr::eq(p, parent))
        })
    }

    fn child<'d>(&'d self, parent: &'d Node, local_name: &str) -> Option<&'d Node> {
        self.children(parent)
            .find(|n| local(self.name(n)) == local_name)
    }

    fn enrollment(&self) -> Option<&Node> {
        self.nodes.iter().find(|n| {
            local(self.name(n)) == "enrollment"
                && n.parent()
                    .and_then(|p| self.nodes.get(p))
                    .is_some_and(|p| self.is(p, &["domain", "metadata"]))
                && self.tag(n).is_some_and(|t| declares_namespace(&t))
        })
    }

    fn text(&self, n: &Node) -> String {
        self.xml[n.start()..n.end()].to_string()
    }
}

/// What the domain XML says about xftrace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainFacts {
    pub name: String,
    pub domain_type: String,
    pub enrolled: bool,
    pub system_map: Option<String>,
    /// Functions to trace from every start (always-on monitoring), if asked.
    pub monitor: Vec<String>,
    pub file_backed: bool,
    pub shared: bool,
    pub immediate: bool,
    pub discard: bool,
    pub hugepages: bool,
    pub memfd: bool,
    pub balloon: bool,
}

impl DomainFacts {
    /// True when QEMU will keep guest RAM in a shared, preallocated file.
    pub fn backing_ok(&self) -> bool {
        self.file_backed && self.shared && self.immediate && !self.discard && !self.hugepages
    }
}

/// The text of `xml`'s `xftrace:enrollment` element, if it has one.
pub fn enrollment_element(xml: &str) -> Option<String> {
    let doc = Doc::parse(xml).ok()?;
    doc.enrollment().map(|n| doc.text(n))
}

/// `xml`'s enrollment as `virDomainSetMetadata` takes it: without the
/// namespace's prefix and declaration, which libvirt adds itself (given a
/// declared prefix, it fails to "create a new XML namespace"). Tags only:
/// a `<` inside an attribute value is escaped in XML text.
pub fn enrollment_for_metadata(xml: &str) -> Option<String> {
    let element = enrollment_element(xml)?;
    Some(
        element
            .replace(&format!(" xmlns:{PREFIX}=\"{NAMESPACE}\""), "")
            .replace(&format!(" xmlns:{PREFIX}='{NAMESPACE}'"), "")
            .replace(&format!("</{PREFIX}:"), "</")
            .replace(&format!("<{PREFIX}:"), "<"),
    )
}

pub fn facts(xml: &str) -> Result<DomainFacts, String> {
    Doc::parse(xml)?.facts()
}

impl Doc<'_> {
    fn facts(&self) -> Result<DomainFacts, String> {
        let root = self
            .nodes
            .first()
            .filter(|n| self.is(n, &["domain"]))
            .ok_or("not a libvirt domain XML")?;
        let name = self
            .find(&["domain", "name"])
            .and_then(|n| n.inner().map(|(a, b)| self.xml[a..b].trim().to_string()))
            .unwrap_or_default();
        let mb = self.find(&["domain", "memoryBacking"]);
        let mb_attr = |local: &str, attr: &str| {
            mb.and_then(|m| self.child(m, local))
                .and_then(|n| self.attr(n, attr))
        };
        let mb_has = |local: &str| mb.and_then(|m| self.child(m, local)).is_some();
        let en = self.enrollment();
        let source = mb_attr("source", "type");
        Ok(DomainFacts {
            name,
            domain_type: self.attr(root, "type").unwrap_or_default(),
            enrolled: en.is_some(),
            system_map: en
                .and_then(|e| self.child(e, "system-map"))
                .and_then(|n| self.attr(n, "path")),
            monitor: en
                .and_then(|e| self.child(e, "monitor"))
                .and_then(|n| self.attr(n, "functions"))
                .map(|f| f.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            file_backed: source.as_deref() == Some("file"),
            shared: mb_attr("access", "mode").as_deref() == Some("shared"),
            immediate: mb_attr("allocation", "mode").as_deref() == Some("immediate"),
            discard: mb_has("discard"),
            hugepages: mb_has("hugepages"),
            memfd: source.as_deref() == Some("memfd"),
            balloon: self
                .find(&["domain", "devices", "memballoon"])
                .is_none_or(|n| self.attr(n, "model").as_deref() != Some("none")),
        })
    }
}

fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// Apply non-overlapping `(start, end, replacement)` splices.
fn splice(xml: &str, mut edits: Vec<(usize, usize, String)>) -> String {
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = xml.to_string();
    for (a, b, text) in edits {
        out.replace_range(a..b, &text);
    }
    out
}

/// Indentation of the line `pos` is on, for inserted siblings.
fn indent_at(xml: &str, pos: usize) -> String {
    let line = xml[..pos].rsplit('\n').next().unwrap_or("");
    line.chars().take_while(|c| c.is_whitespace()).collect()
}

/// Insert `text` as a new element after the last of `after` (top-level
/// children of `<domain>`), or as the first child of `<domain>`.
fn insert_top_level(doc: &Doc, after: &[&str], text: &str) -> Edit {
    let root = &doc.nodes[0];
    let anchor = doc
        .nodes
        .iter()
        .filter(|n| doc.level(n) == 1 && after.contains(&doc.name(n)))
        .max_by_key(|n| n.end());
    match anchor {
        Some(a) => {
            let ind = indent_at(doc.xml, a.start());
            (a.end(), a.end(), format!("\n{ind}{text}"))
        }
        None => {
            let at = root.inner().map_or(root.end(), |(s, _)| s);
            (at, at, format!("\n  {text}"))
        }
    }
}

/// Why a domain cannot be enrolled.
pub fn refuse_reason(f: &DomainFacts) -> Option<String> {
    if f.domain_type != "kvm" && f.domain_type != "qemu" {
        return Some(format!(
            "domain {} is of type '{}'; xftrace works with QEMU domains (type 'kvm' or 'qemu')",
            f.name, f.domain_type
        ));
    }
    if f.hugepages {
        return Some(format!(
            "domain {} uses hugepage-backed memory, which QEMU keeps in an unlinked hugetlbfs file; remove <hugepages/> to enroll it",
            f.name
        ));
    }
    if f.memfd {
        return Some(format!(
            "domain {} uses a memfd memory source, which has no file xftrace can open; enrolling replaces it with a file: remove <source type='memfd'/> first if that is intended",
            f.name
        ));
    }
    None
}

/// Enroll: the edited XML (identical to `xml` if already enrolled the same
/// way). `monitor` lists functions to trace from every start.
pub fn enroll(xml: &str, system_map: Option<&str>, monitor: &[String]) -> Result<String, String> {
    for m in monitor {
        crate::abi::funcs::check_pattern(m)?;
    }
    let doc = Doc::parse(xml)?;
    let f = doc.facts()?;
    if let Some(why) = refuse_reason(&f) {
        return Err(why);
    }
    let already = f.enrolled && f.backing_ok() && !f.balloon;
    if already && f.system_map.as_deref() == system_map && f.monitor == monitor {
        return Ok(xml.to_string());
    }
    let mut edits = Vec::new();
    let old_backing = doc.memory_backing(&f, &mut edits);
    let old_balloon = doc.balloon(&f, &mut edits);
    doc.enrollment_metadata(system_map, monitor, old_backing, old_balloon, &mut edits);
    Ok(splice(xml, edits))
}

/// A splice: replace `[start, end)` with the text.
type Edit = (usize, usize, String);

/// Building the edits, once `facts` has checked the document.
impl Doc<'_> {
    /// `<memoryBacking>` with a shared, preallocated file (other children
    /// kept); returns the element as it was.
    fn memory_backing(&self, f: &DomainFacts, edits: &mut Vec<Edit>) -> Option<String> {
        let mb = self.find(&["domain", "memoryBacking"]);
        let ours = ["source", "access", "allocation", "discard"];
        let (ind, inner_ind) = match mb {
            Some(m) => {
                let i = indent_at(self.xml, m.start());
                (i.clone(), format!("{i}  "))
            }
            None => ("  ".to_string(), "    ".to_string()),
        };
        let mut backing = String::from("<memoryBacking>\n");
        for c in mb.into_iter().flat_map(|m| self.children(m)) {
            if !ours.contains(&self.name(c)) {
                backing.push_str(&format!("{inner_ind}{}\n", self.text(c)));
            }
        }
        backing.push_str(&format!(
            "{inner_ind}<source type='file'/>\n{inner_ind}<access mode='shared'/>\n{inner_ind}<allocation mode='immediate'/>\n{ind}</memoryBacking>"
        ));
        match mb {
            Some(m) if !f.backing_ok() => edits.push((m.start(), m.end(), backing)),
            Some(_) => {}
            None => edits.push(insert_top_level(
                self,
                &[
                    "memory",
                    "currentMemory",
                    "maxMemory",
                    "vcpu",
                    "name",
                    "uuid",
                ],
                &backing,
            )),
        }
        mb.map(|m| self.text(m))
    }

    /// `<memballoon model='none'/>`; returns the element as it was.
    fn balloon(&self, f: &DomainFacts, edits: &mut Vec<Edit>) -> Option<String> {
        let balloon = self.find(&["domain", "devices", "memballoon"]);
        let none = "<memballoon model='none'/>";
        match (balloon, f.balloon) {
            (Some(b), true) => edits.push((b.start(), b.end(), none.to_string())),
            (Some(_), false) => {}
            (None, _) => match self.find(&["domain", "devices"]) {
                Some(d) => {
                    let (_, close) = d.inner().unwrap_or((d.end(), d.end()));
                    let ind = indent_at(self.xml, d.start());
                    edits.push((close, close, format!("  {none}\n{ind}")));
                }
                None => {
                    let root = &self.nodes[0];
                    let close = root.inner().map_or(root.end(), |(_, e)| e);
                    edits.push((
                        close,
                        close,
                        format!("  <devices>\n    {none}\n  </devices>\n"),
                    ));
                }
            },
        }
        balloon.map(|b| self.text(b))
    }

    /// The `xftrace:enrollment` metadata: the System.map, monitoring, and
    /// what an earlier enrollment saved as "previous" (kept as it was).
    fn enrollment_metadata(
        &self,
        system_map: Option<&str>,
        monitor: &[String],
        old_backing: Option<String>,
        old_balloon: Option<String>,
        edits: &mut Vec<Edit>,
    ) {
        let en = self.enrollment();
        let prev = |local: &str, fallback: Option<String>| -> String {
            match en.and_then(|e| self.child(e, local)) {
                Some(n) => self.text(n),
                None => match fallback {
                    Some(v) => format!("<{PREFIX}:{local}>{}</{PREFIX}:{local}>", escape(&v)),
                    None => format!("<{PREFIX}:{local} absent='yes'/>"),
                },
            }
        };
        let element =
            format!(
            "<{PREFIX}:enrollment xmlns:{PREFIX}=\"{NAMESPACE}\">{}{}{}{}</{PREFIX}:enrollment>",
            // None: a stock kernel, its build found by its banner.
            system_map.map_or(String::new(), |m| format!(
                "<{PREFIX}:system-map path=\"{}\"/>",
                escape(m)
            )),
            if monitor.is_empty() {
                String::new()
            } else {
                format!("<{PREFIX}:monitor functions=\"{}\"/>", escape(&monitor.join(" ")))
            },
            prev("previous-memory-backing", old_backing),
            prev("previous-memballoon", old_balloon),
        );
        match (en, self.find(&["domain", "metadata"])) {
            (Some(e), _) => edits.push((e.start(), e.end(), element)),
            (None, Some(m)) => {
                let ind = indent_at(self.xml, m.start());
                match m.inner() {
                    Some((_, close)) => edits.push((close, close, format!("  {element}\n{ind}"))),
                    None => edits.push((
                        m.start(),
                        m.end(),
                        format!("<metadata>\n{ind}  {element}\n{ind}</metadata>"),
                    )),
                }
            }
            (None, None) => edits.push(insert_top_level(
                self,
                &["name", "uuid", "genid", "title", "description"],
                &format!("<metadata>\n    {element}\n  </metadata>"),
            )),
        }
    }
}

/// Undo `enroll`: restore the saved memory backing and balloon and drop the
/// enrollment. Errors if the domain is not enrolled.
pub fn unenroll(xml: &str) -> Result<String, String> {
    let doc = Doc::parse(xml)?;
    let f = doc.facts()?;
    let en = doc
        .enrollment()
        .ok_or_else(|| format!("domain {} is not enrolled in xftrace", f.name))?;
    let saved = |local: &str| -> Result<Option<String>, String> {
        let n = doc
            .child(en, local)
            .ok_or_else(|| format!("enrollment metadata lacks {local}"))?;
        if doc.attr(n, "absent").as_deref() == Some("yes") {
            return Ok(None);
        }
        let (a, b) = n.inner().unwrap_or((n.end(), n.end()));
        quick_xml::escape::unescape(&xml[a..b])
            .map(|s| Some(s.into_owned()))
            .map_err(|e| format!("bad saved XML: {e}"))
    };
    let mut edits = Vec::new();
    let restore =
        |edits: &mut Vec<(usize, usize, String)>, node: Option<&Node>, old: Option<String>| {
            if let Some(n) = node {
                match old {
                    Some(text) => edits.push((n.start(), n.end(), text)),
                    None => {
                        // Remove the element and the whitespace before it.
                        let from = xml[..n.start()].trim_end().len();
                        edits.push((from, n.end(), String::new()));
                    }
                }
            }
        };
    restore(
        &mut edits,
        doc.find(&["domain", "memoryBacking"]),
        saved("previous-memory-backing")?,
    );
    restore(
        &mut edits,
        doc.find(&["domain", "devices", "memballoon"]),
        saved("previous-memballoon")?,
    );
    // Drop the <metadata> wrapper too if the enrollment was all it held.
    let meta = doc.find(&["domain", "metadata"]);
    let only_ours = meta.is_some_and(|m| doc.children(m).count() == 1);
    restore(&mut edits, if only_ours { meta } else { Some(en) }, None);
    Ok(splice(xml, edits))
}

/// What the `prepare begin` hook does with a domain about to start.
#[derive(Debug, PartialEq, Eq)]
pub enum HookDecision {
    Allow,
    Refuse(String),
}

/// Whether `xml` may be enrolled: one pass that looks for an
/// `xftrace:enrollment` element under `/domain/metadata` and keeps nothing
/// but the depth. False only where [`facts`] fails or finds no enrollment:
/// it reads with the same settings and gives up at the same bounds, so
/// the hook decides every domain that is not enrolled without an index.
pub fn may_be_enrolled(xml: &str) -> bool {
    if too_large(xml).is_some() {
        return false;
    }
    let mut r = Reader::from_str(xml);
    r.config_mut().trim_text(false);
    let mut depth = 0usize;
    let mut elements = 0usize;
    // Whether the open element of level 0 is a <domain>, and that of
    // level 1 its <metadata>.
    let mut in_domain = false;
    let mut in_metadata = false;
    loop {
        let (e, empty) = match r.read_event() {
            Ok(Event::Start(e)) => (e, false),
            Ok(Event::Empty(e)) => (e, true),
            Ok(Event::End(_)) => match depth.checked_sub(1) {
                Some(d) => {
                    depth = d;
                    continue;
                }
                None => return false,
            },
            Ok(Event::Eof) | Err(_) => return false,
            Ok(_) => continue,
        };
        if depth >= MAX_DEPTH || elements >= MAX_ELEMENTS {
            return false;
        }
        elements = elements.saturating_add(1);
        let name = e.name();
        match depth {
            0 => in_domain = name.as_ref() == b"domain",
            1 => in_metadata = in_domain && name.as_ref() == b"metadata",
            2 if in_metadata
                && local(&String::from_utf8_lossy(name.as_ref())) == "enrollment"
                && declares_namespace(&e) =>
            {
                return true
            }
            _ => {}
        }
        if !empty {
            depth = depth.saturating_add(1);
        }
    }
}

pub fn prepare_decision(xml: &str) -> HookDecision {
    if !may_be_enrolled(xml) {
        return HookDecision::Allow;
    }
    let f = match facts(xml) {
        Ok(f) => f,
        // Not ours to judge: libvirt validated the XML already.
        Err(_) => return HookDecision::Allow,
    };
    if !f.enrolled || f.backing_ok() {
        return HookDecision::Allow;
    }
    HookDecision::Refuse(format!(
        "xftrace: domain {} is enrolled for tracing but its memory is not a shared, preallocated file \
         (<memoryBacking> needs <source type='file'/>, <access mode='shared'/>, <allocation mode='immediate'/>, \
         no <discard/> or <hugepages/>); run `xftrace enroll {}` to restore it, or `xftrace unenroll {}` to stop tracing it",
        f.name, f.name, f.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = r#"<domain type='kvm' id='3'>
  <name>web01</name>
  <uuid>0b0e0a57-1c1b-4b0e-9a0f-7e2b6f0e3a11</uuid>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><!-- keep me -->
      <source file='/var/lib/libvirt/images/web01.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </memballoon>
  </devices>
</domain>
"#;

    #[test]
    fn enroll_adds_backing_balloon_and_metadata_and_keeps_the_rest() {
        let out = enroll(PLAIN, Some("/var/lib/xftrace/kernels/6.1/System.map"), &[]).unwrap();
        let f = facts(&out).unwrap();
        assert!(f.enrolled && f.backing_ok() && !f.balloon, "{out}");
        assert_eq!(
            f.system_map.as_deref(),
            Some("/var/lib/xftrace/kernels/6.1/System.map")
        );
        // Untouched parts survive byte for byte.
        for keep in [
            "<disk type='file' device='disk'><!-- keep me -->",
            "<uuid>0b0e0a57-1c1b-4b0e-9a0f-7e2b6f0e3a11</uuid>",
            "<type arch='x86_64' machine='pc-q35-7.2'>hvm</type>",
        ] {
            assert!(out.contains(keep), "{out}");
        }
        assert!(out.contains("<memballoon model='none'/>"));
        assert!(!out.contains("<memballoon model='virtio'>\n"));
        assert!(out.contains("<memoryBacking>"));
    }

    #[test]
    fn the_enrollment_for_live_metadata_has_no_prefix_or_declaration() {
        let xml = enroll(PLAIN, Some("/var/lib/xftrace/kernels/a b/System.map"), &[]).unwrap();
        let m = enrollment_for_metadata(&xml).unwrap();
        assert!(m.starts_with("<enrollment>"), "{m}");
        assert!(
            m.contains("<system-map path=\"/var/lib/xftrace/kernels/a b/System.map\"/>"),
            "{m}"
        );
        assert!(!m.contains("xftrace:") && !m.contains("xmlns"), "{m}");
        assert!(m.ends_with("</enrollment>"), "{m}");
        // A stock kernel's enrollment: no system-map, the rest kept.
        let stock = enroll(&xml, None, &[]).unwrap();
        let m = enrollment_for_metadata(&stock).unwrap();
        assert!(
            !m.contains("system-map") && m.contains("<previous-memory-backing"),
            "{m}"
        );
        // As libvirt formats it in a definition it returns.
        let formatted = PLAIN.replace(
            "  <memory unit",
            "  <metadata>\n    <xftrace:enrollment xmlns:xftrace=\"http://xftrace.invalid/ns/enrollment/1\">\n      <xftrace:system-map path=\"/a&lt;xftrace:b\"/>\n    </xftrace:enrollment>\n  </metadata>\n  <memory unit",
        );
        assert_eq!(
            enrollment_for_metadata(&formatted).unwrap(),
            "<enrollment>\n      <system-map path=\"/a&lt;xftrace:b\"/>\n    </enrollment>"
        );
    }

    #[test]
    fn enroll_is_idempotent_and_unenroll_restores() {
        let once = enroll(PLAIN, Some("/k/System.map"), &[]).unwrap();
        let twice = enroll(&once, Some("/k/System.map"), &[]).unwrap();
        assert_eq!(once, twice);
        let back = unenroll(&twice).unwrap();
        assert_eq!(back, PLAIN, "{back}");
        let f = facts(&back).unwrap();
        assert!(!f.enrolled && f.balloon && !f.file_backed);
        // Always-on monitoring is recorded, and changing it is a change.
        let mon = enroll(
            &once,
            Some("/k/System.map"),
            &["sys_read".into(), "sys_openat".into()],
        )
        .unwrap();
        assert_eq!(facts(&mon).unwrap().monitor, vec!["sys_read", "sys_openat"]);
        assert_eq!(unenroll(&mon).unwrap(), PLAIN);
        // A new System.map updates the enrollment but keeps what it saved.
        let other = enroll(&once, Some("/k2/System.map"), &[]).unwrap();
        assert_eq!(
            facts(&other).unwrap().system_map.as_deref(),
            Some("/k2/System.map")
        );
        assert!(facts(&unenroll(&other).unwrap()).unwrap().balloon);
    }

    #[test]
    fn existing_backing_children_are_kept_and_restored() {
        let xml = PLAIN.replace(
            "  <vcpu",
            "  <memoryBacking>\n    <nosharepages/>\n    <discard/>\n  </memoryBacking>\n  <vcpu",
        );
        let out = enroll(&xml, Some("/k/System.map"), &[]).unwrap();
        assert!(out.contains("<nosharepages/>"), "{out}");
        assert!(!out.contains("<discard/>\n"), "{out}");
        assert!(facts(&out).unwrap().backing_ok());
        let back = unenroll(&out).unwrap();
        assert!(
            back.contains(
                "<memoryBacking>\n    <nosharepages/>\n    <discard/>\n  </memoryBacking>"
            ),
            "{back}"
        );
    }

    #[test]
    fn enroll_monitor_takes_function_names_only() {
        let e = enroll(
            PLAIN,
            Some("/k/System.map"),
            &["sys_read --state-dir=/etc".into()],
        )
        .unwrap_err();
        assert!(e.contains("not a function name"), "{e}");
        assert!(enroll(PLAIN, Some("/k/System.map"), &["__x64_sys_*".into()]).is_ok());
    }

    #[test]
    fn refuses_what_cannot_work() {
        let xen = PLAIN.replace("type='kvm'", "type='xen'");
        assert!(enroll(&xen, Some("/m"), &[])
            .unwrap_err()
            .contains("type 'xen'"));
        let huge = PLAIN.replace(
            "  <vcpu",
            "  <memoryBacking><hugepages/></memoryBacking>\n  <vcpu",
        );
        assert!(enroll(&huge, Some("/m"), &[])
            .unwrap_err()
            .contains("hugepage"));
        let memfd = PLAIN.replace(
            "  <vcpu",
            "  <memoryBacking><source type='memfd'/></memoryBacking>\n  <vcpu",
        );
        assert!(enroll(&memfd, Some("/m"), &[])
            .unwrap_err()
            .contains("memfd"));
        assert!(unenroll(PLAIN).unwrap_err().contains("not enrolled"));
        assert!(enroll("<domain", Some("/m"), &[]).is_err());
    }

    #[test]
    fn hook_allows_plain_and_enrolled_domains_and_refuses_broken_ones() {
        assert_eq!(prepare_decision(PLAIN), HookDecision::Allow);
        let enrolled = enroll(PLAIN, Some("/k/System.map"), &[]).unwrap();
        assert_eq!(prepare_decision(&enrolled), HookDecision::Allow);
        // Someone edited the backing away but left the enrollment.
        let broken = enrolled.replace("<access mode='shared'/>", "<access mode='private'/>");
        match prepare_decision(&broken) {
            HookDecision::Refuse(m) => assert!(m.contains("xftrace enroll web01"), "{m}"),
            d => panic!("{d:?}"),
        }
        assert_eq!(prepare_decision("garbage"), HookDecision::Allow);
    }

    #[test]
    fn metadata_of_others_is_left_alone() {
        let xml = PLAIN.replace(
            "  <memory",
            "  <metadata>\n    <app:info xmlns:app=\"http://example.org/app\">x</app:info>\n  </metadata>\n  <memory",
        );
        let out = enroll(&xml, Some("/k/System.map"), &[]).unwrap();
        assert!(out.contains("<app:info xmlns:app=\"http://example.org/app\">x</app:info>"));
        let back = unenroll(&out).unwrap();
        assert!(back.contains("<app:info"));
        assert!(!facts(&back).unwrap().enrolled);
    }

    /// [`PLAIN`] with `inner` in its `<metadata>`, enrolled if `enrolled`.
    fn with_metadata(inner: &str, enrolled: bool) -> String {
        if enrolled {
            let xml = enroll(PLAIN, Some("/k/System.map"), &[]).unwrap();
            xml.replace("</metadata>", &format!("{inner}</metadata>"))
        } else {
            PLAIN.replace(
                "  <memory",
                &format!("  <metadata>{inner}</metadata>\n  <memory"),
            )
        }
    }

    /// `levels` nested `<a>` elements.
    fn nested(levels: usize) -> String {
        format!("{}{}", "<a>".repeat(levels), "</a>".repeat(levels))
    }

    #[test]
    fn hostile_nesting_is_refused_at_once() {
        // 1 MiB of nesting took 916 MiB and 4.3 s (issue 24); as 150 000
        // levels, more than 6 GiB before it failed.
        let deep = nested(150_000);
        for enrolled in [false, true] {
            let xml = with_metadata(&deep, enrolled);
            assert!(xml.len() > 1 << 20);
            let t = std::time::Instant::now();
            // Not ours to judge, enrolled or not: the hook lets it start.
            assert_eq!(may_be_enrolled(&xml), enrolled);
            assert_eq!(prepare_decision(&xml), HookDecision::Allow);
            let e = facts(&xml).unwrap_err();
            assert_eq!(e, "the domain XML nests elements deeper than 256 levels");
            assert_eq!(enroll(&xml, Some("/k/System.map"), &[]).unwrap_err(), e);
            assert_eq!(unenroll(&xml).unwrap_err(), e);
            assert_eq!(enrollment_element(&xml), None);
            let took = t.elapsed();
            assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        }
        // 256 levels, the domain's included, are read.
        assert!(facts(&with_metadata(&nested(MAX_DEPTH - 2), false)).is_ok());
        let e = facts(&with_metadata(&nested(MAX_DEPTH - 1), false)).unwrap_err();
        assert!(e.contains("deeper than 256 levels"), "{e}");
        // Deep within the bound, many times over: read whole, and only its
        // top levels kept.
        let saw = with_metadata(&nested(MAX_DEPTH - 2).repeat(600), false);
        assert!(saw.len() > 1 << 20);
        let out = enroll(&saw, Some("/k/System.map"), &[]).unwrap();
        assert!(facts(&out).unwrap().enrolled);
        assert_eq!(prepare_decision(&out), HookDecision::Allow);
        let back = unenroll(&out).unwrap();
        assert!(back.contains(&nested(MAX_DEPTH - 2)) && !facts(&back).unwrap().enrolled);
    }

    #[test]
    fn wide_documents_are_read_in_linear_time() {
        // 1 MiB of siblings in the metadata: 262 144 elements, within the
        // bound, indexed at 32 bytes each.
        let wide = "<a/>".repeat(1 << 18);
        let xml = with_metadata(&wide, false);
        assert!(!may_be_enrolled(&xml));
        assert_eq!(prepare_decision(&xml), HookDecision::Allow);
        assert!(!facts(&xml).unwrap().enrolled);
        let out = enroll(&xml, Some("/k/System.map"), &[]).unwrap();
        assert!(facts(&out).unwrap().enrolled);
        let back = unenroll(&out).unwrap();
        assert!(back.contains(&wide) && !facts(&back).unwrap().enrolled);
        // One element of 100 000 attributes: quick-xml's own check of their
        // names, quadratic, took 12 s.
        let attrs: String = (0..100_000).map(|i| format!(" a{i}=''")).collect();
        let xml = with_metadata(&format!("<b{attrs}/>"), false);
        let t = std::time::Instant::now();
        assert!(facts(&xml).is_ok());
        let took = t.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        let twice = with_metadata(&format!("<b{attrs} a5=''/>"), false);
        let e = facts(&twice).unwrap_err();
        assert_eq!(e, "bad attribute: a5 appears twice in one element");
    }

    #[test]
    fn documents_beyond_the_bounds_are_refused() {
        let xml = with_metadata(&"<a/>".repeat(MAX_ELEMENTS), false);
        assert_eq!(
            facts(&xml).unwrap_err(),
            "the domain XML has more than 1048576 elements"
        );
        assert!(!may_be_enrolled(&xml));
        let xml = with_metadata(&" ".repeat(MAX_BYTES), true);
        let e = facts(&xml).unwrap_err();
        assert!(
            e.ends_with("bytes, more than the 16777216 xftrace reads"),
            "{e}"
        );
        assert_eq!(prepare_decision(&xml), HookDecision::Allow);
        assert!(enroll(&xml, Some("/k/System.map"), &[]).is_err());
    }

    #[test]
    fn a_byte_order_mark_is_not_counted_in_spans() {
        let xml = format!("\u{feff}{PLAIN}");
        let out = enroll(&xml, Some("/k/System.map"), &[]).unwrap();
        assert_eq!(
            out,
            format!(
                "\u{feff}{}",
                enroll(PLAIN, Some("/k/System.map"), &[]).unwrap()
            )
        );
        assert_eq!(unenroll(&out).unwrap(), xml);
    }
}
