//! The robustness set: camera-like frames generated deterministically from
//! fleetkey enrollment URIs, foreign QR codes and code-free screens, each
//! with a known answer. The robustness tests and the bench
//! (`tests/qr-bench`) both read it.
//!
//! Each frame models a camera photo of a monitor showing a portal page, at
//! 640x480 or 1280x720 (every other frame): a page-like screen (title bar,
//! panels, lines of text) with the QR code drawn on it through a
//! perspective mapping, seen through the monitor's pixel grid (moire), with
//! the camera's exposure, uneven light and glare, a finger or the frame's
//! edge over a corner, defocus or motion blur, mirroring (front cameras),
//! sensor noise and JPEG. Each class stresses one of these; the `hard`
//! class mixes two or three at a milder strength.
//!
//! Every frame is built from its own seed ([`specs`] is cheap; rendering a
//! [`Spec`] is the cost), so a deterministic subset can be rendered alone.
//! Occlusion, crops and glare are checked against the code's modules when
//! the frame is made: no finder pattern is hidden and at most
//! [`MAX_ERASED_MODULES`] data modules are, so every fleetkey frame stays
//! decodable in principle (error correction level M).

use fleetkey_proto::{ActivationCode, EnrollmentPayload};
use qrcode::QrCode;
use qrcode::types::Color;

use crate::frame::{LumaFrame, decode_jpeg_luma};

/// The two frame sizes.
pub const SMALL: (usize, usize) = (640, 480);
pub const LARGE: (usize, usize) = (1280, 720);

/// Modules of a code that occlusion or glare may hide (of the 1681 of a
/// version 6 code; level M corrects about 15% of the codewords).
pub const MAX_ERASED_MODULES: usize = 70;

/// What a frame holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// A fleetkey enrollment URI.
    Fleetkey(String),
    /// A QR code with other content.
    Foreign(String),
    /// No QR code.
    Nothing,
}

/// The kind of trouble a frame stresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Clean frames (and the few the other tests pick by name).
    Basic,
    /// Strong rotation and perspective tilt.
    Perspective,
    /// The monitor's pixel grid beating with the sensor's.
    Moire,
    /// Glare patches, partly on the code.
    Glare,
    /// Low contrast, washed-out screens, dim light, uneven light.
    LowContrast,
    /// Defocus and motion blur.
    Blur,
    /// A finger over a corner, or the code past the frame's edge.
    Occlusion,
    /// Modules under 3 pixels.
    Small,
    /// Strong JPEG compression.
    Jpeg,
    /// Sensor noise.
    Noise,
    /// Dark mode: light modules on a dark screen.
    Inverted,
    /// Front cameras: the frame mirrored.
    Mirrored,
    /// Two or three of the above at once.
    Hard,
    /// Other QR codes (must be read as they are, never as fleetkey's).
    Foreign,
    /// No code: screens and QR-like textures that must read nothing.
    Nothing,
}

impl Class {
    /// The classes of fleetkey frames, in the set's order.
    pub const FLEETKEY: [Class; 13] = [
        Class::Basic,
        Class::Perspective,
        Class::Moire,
        Class::Glare,
        Class::LowContrast,
        Class::Blur,
        Class::Occlusion,
        Class::Small,
        Class::Jpeg,
        Class::Noise,
        Class::Inverted,
        Class::Mirrored,
        Class::Hard,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Basic => "basic",
            Class::Perspective => "perspective",
            Class::Moire => "moire",
            Class::Glare => "glare",
            Class::LowContrast => "low-contrast",
            Class::Blur => "blur",
            Class::Occlusion => "occlusion",
            Class::Small => "small",
            Class::Jpeg => "jpeg",
            Class::Noise => "noise",
            Class::Inverted => "inverted",
            Class::Mirrored => "mirrored",
            Class::Hard => "hard",
            Class::Foreign => "foreign",
            Class::Nothing => "nothing",
        }
    }

    /// Frames of this class in the set.
    fn count(self) -> usize {
        match self {
            Class::Basic => 4,
            Class::Hard => 48,
            Class::Foreign => 6,
            Class::Nothing => 24,
            _ => 24,
        }
    }
}

/// One frame of the set.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub class: Class,
    pub frame: LumaFrame,
    pub expected: Expected,
}

/// A frame's recipe: rendering it gives the [`Sample`].
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub class: Class,
    pub expected: Expected,
    pub width: usize,
    pub height: usize,
    seed: u64,
    look: Look,
    texture: Texture,
}

/// What is drawn where a code would be on frames without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Texture {
    /// The code itself (frames with a code).
    Code,
    /// Only the page.
    Page,
    /// Random modules with three finder patterns and timing lines: a
    /// QR-looking symbol whose content is noise.
    FakeQr,
    /// Random modules without finder patterns.
    RandomModules,
    /// A checkerboard.
    Checker,
    /// Barcode-like stripes.
    Stripes,
    /// Concentric squares, like finder patterns everywhere.
    Squares,
}

#[derive(Debug, Clone, Copy)]
struct Grid {
    /// Screen pixel pitch in camera pixels.
    period: f64,
    angle_deg: f64,
    /// How dark the gaps between screen pixels are (0..1).
    amplitude: f64,
}

#[derive(Debug, Clone, Copy)]
struct Glare {
    /// Centre in the code's unit square (may lie outside it).
    u: f64,
    v: f64,
    /// Radius as a fraction of the code's side.
    radius: f64,
    /// Peak strength (1: white at the centre).
    strength: f64,
    /// Wider than high (or the other way).
    aspect: f64,
}

#[derive(Debug, Clone, Copy)]
struct Finger {
    /// Tip in the code's unit square.
    u: f64,
    v: f64,
    /// Direction the finger comes from (radians, camera frame).
    angle: f64,
    /// Radius as a fraction of the code's side.
    radius: f64,
    /// Skin luma as the camera sees it.
    luma: f64,
}

/// How a code is drawn and degraded.
#[derive(Debug, Clone, Copy)]
struct Look {
    /// Side of the code (quiet zone included) in pixels.
    side: f64,
    rotation_deg: f64,
    /// Perspective: how much narrower the top (tilt_y) or left (tilt_x)
    /// edge is (0: none; negative: the other edge).
    tilt_x: f64,
    tilt_y: f64,
    /// Screen values of dark and light modules (before dark mode).
    dark: f64,
    light: f64,
    dark_mode: bool,
    grid: Option<Grid>,
    /// The luma the camera gives screen black and screen white.
    black: f64,
    white: f64,
    /// Illumination falls by up to this much across the frame.
    gradient: f64,
    glare: [Option<Glare>; 2],
    finger: Option<Finger>,
    /// Modules past the frame's bottom edge at the code's corner without
    /// a finder pattern (0: the code is wholly inside).
    crop: f64,
    /// Box-blur radius, applied twice (about a Gaussian).
    defocus: usize,
    /// Motion blur: length in pixels and direction.
    motion: Option<(usize, f64)>,
    /// Sensor noise, standard deviation in luma.
    noise: f64,
    mirror: bool,
    jpeg_quality: Option<u8>,
}

const CLEAN: Look = Look {
    side: 260.0,
    rotation_deg: 0.0,
    tilt_x: 0.0,
    tilt_y: 0.0,
    dark: 20.0,
    light: 235.0,
    dark_mode: false,
    grid: None,
    black: 0.0,
    white: 255.0,
    gradient: 0.0,
    glare: [None, None],
    finger: None,
    crop: 0.0,
    defocus: 0,
    motion: None,
    noise: 0.0,
    mirror: false,
    jpeg_quality: None,
};

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.range(0.0, 1.0) < p
    }

    fn sign(&mut self) -> f64 {
        if self.chance(0.5) { 1.0 } else { -1.0 }
    }
}

/// An enrollment URI with a code made from `rng`.
fn fleetkey_uri(rng: &mut Rng, user: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut body = [0u8; 15];
    for slot in &mut body {
        *slot = ALPHABET[rng.below(32) as usize];
    }
    EnrollmentPayload {
        code: ActivationCode::from_body(body),
        portal_url: "https://portal.example.com".into(),
        user_hint: Some(user.into()),
        expires_at: Some(1_790_000_000 + rng.below(1_000_000) as i64),
    }
    .to_uri()
}

/// The set, generated once per process.
pub fn shared_set() -> &'static [Sample] {
    static SET: std::sync::OnceLock<Vec<Sample>> = std::sync::OnceLock::new();
    SET.get_or_init(robustness_set)
}

/// The whole set, the same on every run.
pub fn robustness_set() -> Vec<Sample> {
    specs().iter().filter_map(Spec::render).collect()
}

/// Every `step`th frame of the set (the same ones on every run), with
/// every foreign and code-free frame: a cheaper set for debug builds.
pub fn subset(step: usize) -> Vec<Sample> {
    let step = step.max(1);
    specs()
        .iter()
        .enumerate()
        .filter(|(i, s)| {
            // Offsets alternate from one block of `step` to the next, so
            // both frame sizes are sampled.
            i % step == (i / step) % 2 % step
                || matches!(s.expected, Expected::Foreign(_) | Expected::Nothing)
        })
        .filter_map(|(_, s)| s.render())
        .collect()
}

/// The first frame whose name starts with `prefix`, rendered alone.
pub fn sample(prefix: &str) -> Option<Sample> {
    specs()
        .iter()
        .find(|s| s.name.starts_with(prefix))
        .and_then(Spec::render)
}

/// The recipes of the whole set, in order: fleetkey frames class by
/// class, then foreign codes, then frames without a code.
pub fn specs() -> Vec<Spec> {
    let mut specs = Vec::new();
    let mut index = 0u64;
    let mut next_rng = || {
        index += 1;
        Rng(0x5eed_f1ee_7cee ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d))
    };
    for class in Class::FLEETKEY {
        for i in 0..class.count() {
            let mut rng = next_rng();
            let (width, height) = if i % 2 == 0 { SMALL } else { LARGE };
            let (variant, look) = if class == Class::Basic {
                basic(i, width)
            } else {
                ("", look_for(class, &mut rng, width, height))
            };
            let user = if rng.chance(0.5) {
                "alice"
            } else {
                "bob.smith@example.com"
            };
            let uri = fleetkey_uri(&mut rng, user);
            let n = specs.len();
            // The basic frames are named for their look (older tests pick
            // them by name), the others for their class.
            let name = if class == Class::Basic {
                format!("fleetkey-{variant}-{n}")
            } else {
                format!("fleetkey-{}-{n}", class.name())
            };
            specs.push(Spec {
                name,
                class,
                expected: Expected::Fleetkey(uri),
                width,
                height,
                seed: rng.next(),
                look,
                texture: Texture::Code,
            });
        }
    }
    let foreign = [
        "https://example.com/login?session=42",
        "WIFI:T:WPA;S:office;P:correct horse battery staple;;",
        "fleetkey is great",
        "fleetkey:not-an-enrollment",
        "BEGIN:VCARD\nVERSION:3.0\nN:Smith;Bob\nEND:VCARD",
        "otpauth://totp/Example:alice@example.com?secret=JBSWY3DPEHPK3PXP&issuer=Example",
    ];
    for (i, text) in foreign.iter().enumerate() {
        let mut rng = next_rng();
        let (width, height) = if i % 2 == 0 { SMALL } else { LARGE };
        let look = if i < 3 {
            Look {
                rotation_deg: 10.0 * i as f64,
                side: if i == 1 { 400.0 } else { 260.0 },
                ..CLEAN
            }
        } else {
            let class = [Class::Perspective, Class::Glare, Class::Inverted][i - 3];
            look_for(class, &mut rng, width, height)
        };
        specs.push(Spec {
            name: format!("foreign-{i}"),
            class: Class::Foreign,
            expected: Expected::Foreign(text.to_string()),
            width,
            height,
            seed: rng.next(),
            look,
            texture: Texture::Code,
        });
    }
    let textures = [
        Texture::Page,
        Texture::FakeQr,
        Texture::RandomModules,
        Texture::Checker,
        Texture::Stripes,
        Texture::Squares,
    ];
    for i in 0..Class::Nothing.count() {
        let mut rng = next_rng();
        let (width, height) = if i % 2 == 0 { SMALL } else { LARGE };
        // The first frames keep what older tests used: page-only screens.
        let texture = if i < 3 {
            Texture::Page
        } else {
            textures[i % textures.len()]
        };
        let degrade = Class::FLEETKEY[1 + i % (Class::FLEETKEY.len() - 1)];
        let mut look = if i < 3 {
            Look {
                noise: 3.0 * i as f64,
                defocus: i % 2,
                dark_mode: i == 1,
                ..CLEAN
            }
        } else {
            look_for(degrade, &mut rng, width, height)
        };
        look.finger = None;
        look.crop = 0.0;
        specs.push(Spec {
            name: format!("nothing-{i}"),
            class: Class::Nothing,
            expected: Expected::Nothing,
            width,
            height,
            seed: rng.next(),
            look,
            texture,
        });
    }
    specs
}

/// The basic frames: clean, and a mildly rotated mirrored one (the scan
/// loop's and the end-to-end tests pick them by name).
fn basic(i: usize, width: usize) -> (&'static str, Look) {
    let big = width > SMALL.0;
    match i {
        0 => ("clean", CLEAN),
        1 => (
            "mirrored-rotated",
            Look {
                mirror: true,
                rotation_deg: 30.0,
                tilt_y: 0.15,
                side: 360.0,
                ..CLEAN
            },
        ),
        2 => (
            "large",
            Look {
                side: 420.0,
                noise: 2.0,
                ..CLEAN
            },
        ),
        _ => (
            "rotated",
            Look {
                rotation_deg: 170.0,
                side: if big { 380.0 } else { 260.0 },
                noise: 2.0,
                jpeg_quality: Some(85),
                ..CLEAN
            },
        ),
    }
}

/// A photo of a screen as a phone or laptop camera takes it, before any
/// class's trouble: a code of a comfortable size, a little rotation and
/// tilt, some noise, often JPEG.
fn base_look(rng: &mut Rng, width: usize, height: usize) -> Look {
    let short = width.min(height) as f64;
    Look {
        side: short * rng.range(0.38, 0.72),
        rotation_deg: rng.range(-12.0, 12.0),
        tilt_x: rng.range(-0.08, 0.08),
        tilt_y: rng.range(-0.08, 0.08),
        dark: rng.range(5.0, 40.0),
        light: rng.range(200.0, 250.0),
        black: rng.range(0.0, 25.0),
        white: rng.range(215.0, 255.0),
        gradient: rng.range(0.0, 0.2),
        noise: rng.range(1.0, 4.0),
        jpeg_quality: if rng.chance(0.5) {
            Some(rng.range(70.0, 92.0) as u8)
        } else {
            None
        },
        ..CLEAN
    }
}

/// A look for `class`, drawn from `rng`.
fn look_for(class: Class, rng: &mut Rng, width: usize, height: usize) -> Look {
    let mut look = base_look(rng, width, height);
    if class == Class::Hard {
        const MIXABLE: [Class; 10] = [
            Class::Perspective,
            Class::Moire,
            Class::Glare,
            Class::LowContrast,
            Class::Blur,
            Class::Occlusion,
            Class::Small,
            Class::Jpeg,
            Class::Noise,
            Class::Inverted,
        ];
        let count = 2 + rng.below(2) as usize;
        let mut picked: Vec<Class> = Vec::new();
        while picked.len() < count {
            let c = MIXABLE[rng.below(MIXABLE.len() as u64) as usize];
            // Small codes and blur or occlusion together leave nothing to read.
            let clash = picked.iter().any(|p| {
                matches!(
                    (p, c),
                    (Class::Small, Class::Blur | Class::Occlusion)
                        | (Class::Blur | Class::Occlusion, Class::Small)
                )
            });
            if !picked.contains(&c) && !clash {
                picked.push(c);
            }
        }
        // Size first: blur and the others scale with it.
        picked.sort_by_key(|c| *c != Class::Small);
        for c in picked {
            degrade(&mut look, c, rng, width, height, 0.65);
        }
        if rng.chance(0.3) {
            look.mirror = true;
        }
        return look;
    }
    degrade(&mut look, class, rng, width, height, 1.0);
    look
}

/// Adds `class`'s trouble to `look` at `severity` (1: full).
fn degrade(look: &mut Look, class: Class, rng: &mut Rng, width: usize, height: usize, s: f64) {
    let short = width.min(height) as f64;
    match class {
        Class::Basic | Class::Hard | Class::Foreign | Class::Nothing => {}
        Class::Perspective => {
            look.rotation_deg = rng.range(-180.0, 180.0);
            look.tilt_x = rng.sign() * rng.range(0.1, 0.4 * s + 0.05);
            look.tilt_y = rng.sign() * rng.range(0.1, 0.4 * s + 0.05);
            if rng.chance(0.3) {
                look.tilt_x = 0.0;
            }
        }
        Class::Moire => {
            look.grid = Some(Grid {
                period: rng.range(1.2, 3.6),
                angle_deg: rng.range(-6.0, 6.0),
                amplitude: rng.range(0.2, 0.3 + 0.25 * s),
            });
        }
        Class::Glare => {
            let on_code = rng.chance(0.7);
            look.glare[0] = Some(if on_code {
                Glare {
                    u: rng.range(0.2, 0.85),
                    v: rng.range(0.2, 0.85),
                    radius: rng.range(0.08, 0.3),
                    strength: rng.range(0.75, 1.0) * s.max(0.85),
                    aspect: rng.range(0.6, 1.8),
                }
            } else {
                // A broad veil over the code and around it.
                Glare {
                    u: rng.range(0.0, 1.0),
                    v: rng.range(0.0, 1.0),
                    radius: rng.range(0.5, 1.1),
                    strength: rng.range(0.5, 0.55 + 0.25 * s),
                    aspect: rng.range(0.7, 1.5),
                }
            });
            if rng.chance(0.35) {
                look.glare[1] = Some(Glare {
                    u: rng.range(-0.3, 1.3),
                    v: rng.range(-0.3, 1.3),
                    radius: rng.range(0.1, 0.4),
                    strength: rng.range(0.6, 1.0),
                    aspect: rng.range(0.5, 2.0),
                });
            }
        }
        Class::LowContrast => match rng.below(4) {
            0 => {
                // A pale code on the screen.
                look.dark = rng.range(80.0, 120.0);
                look.light = look.dark + rng.range(30.0, 30.0 + 40.0 * (1.2 - s));
            }
            1 => {
                // Room light washing the screen out.
                look.black = rng.range(90.0, 150.0);
                look.white = look.black + rng.range(35.0, 35.0 + 50.0 * (1.2 - s));
            }
            2 => {
                // Dim: underexposed, with gain noise.
                look.black = rng.range(0.0, 6.0);
                look.white = rng.range(30.0, 30.0 + 40.0 * (1.2 - s));
                look.noise = rng.range(2.0, 5.0);
            }
            _ => {
                // Uneven light: one side in shadow.
                look.gradient = rng.range(0.5, 0.5 + 0.3 * s);
                look.white = rng.range(110.0, 170.0);
                look.black = rng.range(10.0, 40.0);
            }
        },
        Class::Blur => {
            if rng.chance(0.5) {
                look.defocus = 1 + rng.below(if s < 1.0 { 2 } else { 3 }) as usize;
                let min_side = (3.0 * look.defocus as f64 + 1.5) * 49.0;
                look.side = look.side.max(min_side.min(short * 0.9));
            } else {
                let length = 4 + rng.below((10.0 * s) as u64) as usize;
                look.motion = Some((length, rng.range(0.0, std::f64::consts::PI)));
                let min_side = (length as f64 * 0.8 + 1.0) * 49.0;
                look.side = look.side.max(min_side.min(short * 0.9));
            }
        }
        Class::Occlusion => {
            if rng.chance(0.55) {
                look.finger = Some(Finger {
                    u: rng.range(0.6, 0.95),
                    v: rng.range(0.6, 0.95),
                    angle: rng.range(0.1, 1.4),
                    radius: rng.range(0.06, 0.12),
                    luma: rng.range(90.0, 200.0),
                });
            } else {
                look.rotation_deg = rng.range(30.0, 60.0);
                look.tilt_x = 0.0;
                look.tilt_y = 0.0;
                look.crop = rng.range(2.0, 2.0 + 6.0 * s);
            }
            look.side = look.side.min(short * 0.6);
        }
        Class::Small => {
            let m = rng.range(1.6, 3.0);
            look.side = 49.0 * m;
            if look.defocus > 0 || look.motion.is_some() {
                look.side = look.side.max(49.0 * 3.0);
            }
        }
        Class::Jpeg => {
            look.jpeg_quality = Some(rng.range(12.0, 12.0 + 28.0 * (1.5 - s)) as u8);
            if rng.chance(0.4) {
                look.side = look.side.min(49.0 * rng.range(3.0, 4.5));
            }
        }
        Class::Noise => {
            look.noise = rng.range(8.0, 8.0 + 22.0 * s);
            if rng.chance(0.3) {
                look.white = rng.range(90.0, 150.0);
            }
        }
        Class::Inverted => {
            look.dark_mode = true;
            if rng.chance(0.4) {
                look.mirror = true;
            }
        }
        Class::Mirrored => {
            look.mirror = true;
            look.rotation_deg = rng.range(-25.0, 25.0);
        }
    }
}

impl Spec {
    /// Draws the frame (None only if the recipe cannot be drawn, which
    /// the set's own recipes never are).
    pub fn render(&self) -> Option<Sample> {
        Some(Sample {
            name: self.name.clone(),
            class: self.class,
            frame: render(self)?,
            expected: self.expected.clone(),
        })
    }
}

/// The symbol's modules: true for dark.
struct Symbol {
    modules: usize,
    dark: Vec<bool>,
}

fn symbol(spec: &Spec, rng: &mut Rng) -> Option<Symbol> {
    match (&spec.texture, &spec.expected) {
        (Texture::Code, Expected::Fleetkey(text) | Expected::Foreign(text)) => {
            let code = QrCode::new(text.as_bytes()).ok()?;
            Some(Symbol {
                modules: code.width(),
                dark: code.to_colors().iter().map(|c| *c == Color::Dark).collect(),
            })
        }
        (Texture::Page, _) | (Texture::Code, Expected::Nothing) => None,
        (Texture::FakeQr, _) => {
            let n = 41;
            let mut dark: Vec<bool> = (0..n * n).map(|_| rng.chance(0.5)).collect();
            for (cx, cy) in [(0, 0), (n - 7, 0), (0, n - 7)] {
                for y in 0..9 {
                    for x in 0..9 {
                        let (px, py) = (cx as isize + x - 1, cy as isize + y - 1);
                        if px < 0 || py < 0 || px >= n as isize || py >= n as isize {
                            continue;
                        }
                        let (dx, dy) = ((x - 1).clamp(-1, 7), (y - 1).clamp(-1, 7));
                        let ring = dx.min(dy).min(6 - dx).min(6 - dy);
                        dark[py as usize * n + px as usize] = ring == 0 || ring >= 2;
                    }
                }
            }
            for i in 8..n - 8 {
                dark[6 * n + i] = i % 2 == 0;
                dark[i * n + 6] = i % 2 == 0;
            }
            Some(Symbol { modules: n, dark })
        }
        (Texture::RandomModules, _) => {
            let n = 25 + rng.below(20) as usize;
            Some(Symbol {
                modules: n,
                dark: (0..n * n).map(|_| rng.chance(0.5)).collect(),
            })
        }
        (Texture::Checker, _) => {
            let n = 30;
            Some(Symbol {
                modules: n,
                dark: (0..n * n).map(|i| (i % n + i / n) % 2 == 0).collect(),
            })
        }
        (Texture::Stripes, _) => {
            let n = 60;
            let widths: Vec<bool> = (0..n).map(|_| rng.chance(0.5)).collect();
            Some(Symbol {
                modules: n,
                dark: (0..n * n).map(|i| widths[i % n]).collect(),
            })
        }
        (Texture::Squares, _) => {
            let n = 35;
            Some(Symbol {
                modules: n,
                dark: (0..n * n)
                    .map(|i| {
                        let (x, y) = (i % n % 7, i / n % 7);
                        let ring = x.min(y).min(6 - x).min(6 - y);
                        ring != 1
                    })
                    .collect(),
            })
        }
    }
}

/// Where the code lies: the homography from its unit square (quiet zone
/// included) to the frame.
#[derive(Clone, Copy)]
struct Placement {
    to_frame: Mat3,
    to_square: Mat3,
}

fn place(
    look: &Look,
    rng: &mut Rng,
    width: usize,
    height: usize,
    modules: usize,
) -> Option<Placement> {
    let half = look.side / 2.0;
    let (s, c) = look.rotation_deg.to_radians().sin_cos();
    let (tx, ty) = (look.tilt_x, look.tilt_y);
    // Corners of the square (top-left, top-right, bottom-right,
    // bottom-left), one edge narrowed by each tilt.
    let unit = [
        (-half * (1.0 - ty.max(0.0)), -half * (1.0 - tx.max(0.0))),
        (half * (1.0 - ty.max(0.0)), -half * (1.0 + tx.min(0.0))),
        (half * (1.0 + ty.min(0.0)), half * (1.0 + tx.min(0.0))),
        (-half * (1.0 + ty.min(0.0)), half * (1.0 - tx.max(0.0))),
    ];
    let rotated: Vec<(f64, f64)> = unit
        .iter()
        .map(|(x, y)| (x * c - y * s, x * s + y * c))
        .collect();
    let (min_x, max_x) = rotated
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (min_y, max_y) = rotated
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (w, h) = (width as f64, height as f64);
    let pick = |rng: &mut Rng, lo: f64, hi: f64| {
        if hi > lo {
            rng.range(lo, hi)
        } else {
            (lo + hi) / 2.0
        }
    };
    let cx = pick(rng, -min_x + 4.0, w - max_x - 4.0);
    let cy = if look.crop > 0.0 {
        // The bottom-right corner (no finder pattern) past the bottom edge:
        // the quiet zone's diagonal, then `crop` modules of the symbol.
        let module = look.side / (modules + 8) as f64;
        let corner_y = rotated[2].1;
        h - corner_y + (4.0 * std::f64::consts::SQRT_2 + look.crop) * module * 0.75
    } else {
        pick(rng, -min_y + 4.0, h - max_y - 4.0)
    };
    let quad: Vec<(f64, f64)> = rotated.iter().map(|(x, y)| (cx + x, cy + y)).collect();
    let to_frame = square_to_quad(&quad)?;
    Some(Placement {
        to_frame,
        to_square: invert3(to_frame)?,
    })
}

/// Whether the frame hides no finder pattern and at most
/// [`MAX_ERASED_MODULES`] modules of the symbol.
fn decodable(
    placement: &Placement,
    modules: usize,
    width: usize,
    height: usize,
    erased: impl Fn(f64, f64) -> bool,
) -> bool {
    let total = (modules + 8) as f64;
    let mut count = 0;
    for my in 0..modules {
        for mx in 0..modules {
            let (u, v) = ((mx as f64 + 4.5) / total, (my as f64 + 4.5) / total);
            let (x, y) = apply(&placement.to_frame, u, v);
            let hidden =
                x < 0.0 || y < 0.0 || x >= width as f64 || y >= height as f64 || erased(x, y);
            if !hidden {
                continue;
            }
            let (left, top) = (mx < 8, my < 8);
            let (right, bottom) = (mx + 8 >= modules, my + 8 >= modules);
            let finder = (top && (left || right)) || (bottom && left);
            if finder {
                return false;
            }
            count += 1;
        }
    }
    count <= MAX_ERASED_MODULES
}

fn glare_at(g: &Glare, centre: (f64, f64), side: f64, x: f64, y: f64) -> f64 {
    let r = g.radius * side;
    let dx = (x - centre.0) / (r * g.aspect.sqrt());
    let dy = (y - centre.1) / (r / g.aspect.sqrt());
    let d2 = dx * dx + dy * dy;
    if d2 > 9.0 {
        return 0.0;
    }
    // A flat-topped blob: saturated core, soft edge.
    (g.strength * 1.3 * (-d2).exp()).min(g.strength.min(1.0))
}

/// The finger as a capsule: tip and a point far outside, radius in px.
fn finger_shape(f: &Finger, placement: &Placement, side: f64) -> ((f64, f64), (f64, f64), f64) {
    let tip = apply(&placement.to_frame, f.u, f.v);
    let far = (
        tip.0 + f.angle.cos() * side * 4.0,
        tip.1 + f.angle.sin() * side * 4.0,
    );
    (tip, far, f.radius * side)
}

fn segment_distance(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (abx, aby) = (b.0 - a.0, b.1 - a.1);
    let t = (((p.0 - a.0) * abx + (p.1 - a.1) * aby) / (abx * abx + aby * aby)).clamp(0.0, 1.0);
    let (dx, dy) = (p.0 - a.0 - t * abx, p.1 - a.1 - t * aby);
    (dx * dx + dy * dy).sqrt()
}

/// Draws one frame.
fn render(spec: &Spec) -> Option<LumaFrame> {
    let (width, height) = (spec.width, spec.height);
    let mut rng = Rng(spec.seed);
    let mut look = spec.look;
    let mut screen = background(&mut rng, width, height);
    let symbol = symbol(spec, &mut rng);
    let mut placement = None;
    if let Some(symbol) = &symbol {
        let p = place(&look, &mut rng, width, height, symbol.modules)?;
        // Keep occlusion, crops and glare within what error correction
        // recovers: weaken them until the symbol stays decodable.
        let mut p = p;
        let is_code = spec.texture == Texture::Code;
        for _ in 0..12 {
            let finger = look.finger.map(|f| finger_shape(&f, &p, look.side));
            let glares: Vec<(Glare, (f64, f64))> = look
                .glare
                .iter()
                .flatten()
                .map(|g| (*g, apply(&p.to_frame, g.u, g.v)))
                .collect();
            let ok = !is_code
                || decodable(&p, symbol.modules, width, height, |x, y| {
                    finger.is_some_and(|(a, b, r)| segment_distance((x, y), a, b) < r + 1.0)
                        || glares
                            .iter()
                            .any(|(g, c)| glare_at(g, *c, look.side, x, y) > 0.82)
                });
            if ok {
                break;
            }
            if let Some(f) = &mut look.finger {
                f.u = (f.u + 0.03).min(1.2);
                f.v = (f.v + 0.03).min(1.2);
            }
            for g in look.glare.iter_mut().flatten() {
                g.strength *= 0.93;
                g.radius *= 0.93;
            }
            if look.crop > 0.0 {
                look.crop = (look.crop - 1.0).max(-4.0);
                let mut again = Rng(spec.seed ^ 0x0c70);
                p = place(&look, &mut again, width, height, symbol.modules)?;
            }
        }
        draw_symbol(&mut screen, width, height, symbol, &p, &look);
        placement = Some(p);
    }
    if look.dark_mode {
        for v in &mut screen {
            *v = 255.0 - *v;
        }
    }
    if let Some(grid) = look.grid {
        let (s, c) = grid.angle_deg.to_radians().sin_cos();
        for y in 0..height {
            for x in 0..width {
                let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
                let u = (fx * c + fy * s) / grid.period;
                let v = (-fx * s + fy * c) / grid.period;
                // Gaps a quarter of the pitch wide between screen pixels.
                let gap = f64::from(u8::from(u.fract() < 0.25) + u8::from(v.fract() < 0.25));
                screen[y * width + x] *= (1.0 - grid.amplitude * gap * 0.6) as f32;
            }
        }
    }
    // The camera: exposure, light falling off across the frame.
    let (gs, gc) = rng.range(0.0, std::f64::consts::TAU).sin_cos();
    let span = (width + height) as f64 / 2.0;
    let (black, range) = (look.black, (look.white - look.black) / 255.0);
    for y in 0..height {
        for x in 0..width {
            let t = ((x as f64 - width as f64 / 2.0) * gc + (y as f64 - height as f64 / 2.0) * gs)
                / span;
            let light = 1.0 - look.gradient * (t + 0.5).clamp(0.0, 1.0);
            let i = y * width + x;
            screen[i] = ((black + f64::from(screen[i]) * range) * light) as f32;
        }
    }
    if let Some(p) = &placement {
        for g in look.glare.iter().flatten() {
            let centre = apply(&p.to_frame, g.u, g.v);
            let r = g.radius * look.side * 3.0 * g.aspect.max(1.0 / g.aspect);
            let (x0, x1) = span_of(centre.0 - r, centre.0 + r, width);
            let (y0, y1) = span_of(centre.1 - r, centre.1 + r, height);
            for y in y0..y1 {
                for x in x0..x1 {
                    let k = glare_at(g, centre, look.side, x as f64, y as f64) as f32;
                    let i = y * width + x;
                    screen[i] += (255.0 - screen[i]) * k;
                }
            }
        }
        if let Some(f) = &look.finger {
            let (a, b, r) = finger_shape(f, p, look.side);
            for y in 0..height {
                for x in 0..width {
                    let d = segment_distance((x as f64, y as f64), a, b);
                    if d < r + 1.5 {
                        // Rounder towards the edges: darker; soft outline.
                        let shade = 1.0 - 0.35 * (d / r).min(1.0).powi(2);
                        let cover = ((r + 1.5 - d) / 3.0).clamp(0.0, 1.0);
                        let i = y * width + x;
                        let skin = f.luma * shade;
                        screen[i] = (f64::from(screen[i]) * (1.0 - cover) + skin * cover) as f32;
                    }
                }
            }
        }
    }
    let mut pixels: Vec<u8> = screen
        .iter()
        .map(|v| (v + 0.5).clamp(0.0, 255.0) as u8)
        .collect();
    drop(screen);
    if look.defocus > 0 {
        for _ in 0..2 {
            pixels = box_blur(&pixels, width, height, look.defocus);
        }
    }
    if let Some((length, angle)) = look.motion {
        pixels = motion_blur(&pixels, width, height, length, angle);
    }
    if look.mirror {
        for row in pixels.chunks_exact_mut(width) {
            row.reverse();
        }
    }
    if look.noise > 0.0 {
        // Irwin-Hall of four bytes: about Gaussian, sd 128/sqrt(3) / 2.
        let scale = look.noise / 73.9;
        for pair in pixels.chunks_mut(2) {
            let bits = rng.next();
            for (k, p) in pair.iter_mut().enumerate() {
                let b = bits >> (32 * k);
                let sum: i32 = (0..4).map(|j| ((b >> (8 * j)) & 0xff) as i32).sum::<i32>() - 510;
                let n = (f64::from(sum) * scale) as i32;
                *p = (i32::from(*p) + n).clamp(0, 255) as u8;
            }
        }
    }
    let frame = LumaFrame::new(width, height, pixels).ok()?;
    Some(match look.jpeg_quality {
        Some(quality) => jpeg_round_trip(&frame, quality),
        None => frame,
    })
}

fn span_of(lo: f64, hi: f64, limit: usize) -> (usize, usize) {
    let lo = lo.floor().max(0.0) as usize;
    let hi = (hi.ceil().max(0.0) as usize).min(limit);
    (lo.min(hi), hi)
}

/// A portal page on screen (screen values, 0..255): a light page with a
/// title bar, a card, buttons and lines of text.
fn background(rng: &mut Rng, width: usize, height: usize) -> Vec<f32> {
    let mut px = vec![0f32; width * height];
    let base = 215.0 + rng.range(0.0, 35.0);
    let falloff = rng.range(0.0, 25.0);
    for y in 0..height {
        for x in 0..width {
            px[y * width + x] = (base - falloff * (x + y) as f64 / (width + height) as f64) as f32;
        }
    }
    let scale = height as f64 / 480.0;
    let sc = |v: f64| (v * scale) as usize;
    let fill = |px: &mut Vec<f32>, x0: usize, y0: usize, w: usize, h: usize, v: f32| {
        for y in y0..(y0 + h).min(height) {
            for x in x0..(x0 + w).min(width) {
                px[y * width + x] = v;
            }
        }
    };
    fill(&mut px, 0, 0, width, sc(28.0), rng.range(40.0, 90.0) as f32);
    // A card in the middle, a shade off the page.
    let card = rng.range(235.0, 255.0) as f32;
    fill(
        &mut px,
        width / 6,
        sc(50.0),
        width * 2 / 3,
        height - sc(80.0),
        card,
    );
    for _ in 0..4 {
        let (x, y) = (
            rng.below(width as u64 - 80) as usize,
            rng.below(height as u64 - 30) as usize,
        );
        fill(
            &mut px,
            x,
            y,
            sc(70.0),
            sc(24.0),
            rng.range(60.0, 160.0) as f32,
        );
    }
    let lines = height / sc(36.0).max(1);
    for line in 0..lines {
        let y = sc(40.0) + line * sc(36.0);
        let mut x = 10 + rng.below(20) as usize;
        let ink = rng.range(40.0, 110.0) as f32;
        while x + 20 < width {
            let word = sc(8.0) + rng.below(sc(40.0) as u64) as usize;
            fill(&mut px, x, y, word, sc(6.0).max(2), ink);
            x += word + sc(6.0);
        }
    }
    px
}

/// Draws the symbol (with its quiet zone, on a light card) through the
/// placement, supersampled (3x3 for small modules, 2x2 otherwise).
fn draw_symbol(
    px: &mut [f32],
    width: usize,
    height: usize,
    symbol: &Symbol,
    placement: &Placement,
    look: &Look,
) {
    let modules = symbol.modules;
    let total = (modules + 8) as f64;
    let samples: usize = if look.side / total < 4.0 { 3 } else { 2 };
    let corners = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
        .map(|(u, v)| apply(&placement.to_frame, u, v));
    let (min_x, max_x) = corners
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (min_y, max_y) = corners
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (dark, light) = (look.dark, look.light);
    let (x0, x1) = span_of(min_x, max_x, width);
    let (y0, y1) = span_of(min_y, max_y, height);
    let m = &placement.to_square;
    let n = samples as f64;
    for y in y0..y1 {
        for x in x0..x1 {
            let mut inside = 0u32;
            let mut dark_hits = 0u32;
            for sy in 0..samples {
                for sx in 0..samples {
                    let (fx, fy) = (
                        x as f64 + (sx as f64 + 0.5) / n,
                        y as f64 + (sy as f64 + 0.5) / n,
                    );
                    let (u, v) = apply(m, fx, fy);
                    if !(0.0..1.0).contains(&u) || !(0.0..1.0).contains(&v) {
                        continue;
                    }
                    inside += 1;
                    let (mx, my) = ((u * total) as isize - 4, (v * total) as isize - 4);
                    if mx >= 0
                        && my >= 0
                        && (mx as usize) < modules
                        && (my as usize) < modules
                        && symbol.dark[my as usize * modules + mx as usize]
                    {
                        dark_hits += 1;
                    }
                }
            }
            if inside > 0 {
                let code_value = (dark * f64::from(dark_hits)
                    + light * f64::from(inside - dark_hits))
                    / f64::from(inside);
                let i = y * width + x;
                let cover = f64::from(inside) / (n * n);
                px[i] = (code_value * cover + f64::from(px[i]) * (1.0 - cover)) as f32;
            }
        }
    }
}

type Mat3 = [[f64; 3]; 3];

/// The homography mapping the unit square's corners (0,0), (1,0), (1,1),
/// (0,1) onto `quad`.
fn square_to_quad(quad: &[(f64, f64)]) -> Option<Mat3> {
    let [(x0, y0), (x1, y1), (x2, y2), (x3, y3)] = [quad[0], quad[1], quad[2], quad[3]];
    let (dx1, dx2, dx3) = (x1 - x2, x3 - x2, x0 - x1 + x2 - x3);
    let (dy1, dy2, dy3) = (y1 - y2, y3 - y2, y0 - y1 + y2 - y3);
    let det = dx1 * dy2 - dx2 * dy1;
    if det.abs() < 1e-12 {
        return None;
    }
    let g = (dx3 * dy2 - dx2 * dy3) / det;
    let h = (dx1 * dy3 - dx3 * dy1) / det;
    Some([
        [x1 - x0 + g * x1, x3 - x0 + h * x3, x0],
        [y1 - y0 + g * y1, y3 - y0 + h * y3, y0],
        [g, h, 1.0],
    ])
}

fn invert3(m: Mat3) -> Option<Mat3> {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det.abs() < 1e-12 {
        return None;
    }
    let mut inv = [[0.0; 3]; 3];
    for (r, row) in inv.iter_mut().enumerate() {
        for (c, cell) in row.iter_mut().enumerate() {
            let (r1, r2) = ((c + 1) % 3, (c + 2) % 3);
            let (c1, c2) = ((r + 1) % 3, (r + 2) % 3);
            *cell = (m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]) / det;
        }
    }
    Some(inv)
}

fn apply(m: &Mat3, x: f64, y: f64) -> (f64, f64) {
    let w = m[2][0] * x + m[2][1] * y + m[2][2];
    (
        (m[0][0] * x + m[0][1] * y + m[0][2]) / w,
        (m[1][0] * x + m[1][1] * y + m[1][2]) / w,
    )
}

/// A box blur of `radius`, with running sums (the cost does not grow with
/// the radius).
fn box_blur(px: &[u8], width: usize, height: usize, radius: usize) -> Vec<u8> {
    fn line(src: &[u8], dst: &mut [u8], len: usize, stride: usize, start: usize, radius: usize) {
        let at = |i: usize| u32::from(src[start + i * stride]);
        let mut sum: u32 = (0..=radius.min(len - 1)).map(at).sum();
        let mut count = (radius + 1).min(len) as u32;
        for i in 0..len {
            dst[start + i * stride] = (sum / count) as u8;
            if i + radius + 1 < len {
                sum += at(i + radius + 1);
                count += 1;
            }
            if i >= radius {
                sum -= at(i - radius);
                count -= 1;
            }
        }
    }
    let mut tmp = vec![0u8; px.len()];
    let mut out = vec![0u8; px.len()];
    for y in 0..height {
        line(px, &mut tmp, width, 1, y * width, radius);
    }
    for x in 0..width {
        line(&tmp, &mut out, height, width, x, radius);
    }
    out
}

/// Motion blur: the mean along a line of `length` pixels at `angle`.
fn motion_blur(px: &[u8], width: usize, height: usize, length: usize, angle: f64) -> Vec<u8> {
    let (s, c) = angle.sin_cos();
    let offsets: Vec<(isize, isize)> = (0..length)
        .map(|k| {
            let t = k as f64 - (length as f64 - 1.0) / 2.0;
            ((t * c).round() as isize, (t * s).round() as isize)
        })
        .collect();
    let mut out = vec![0u8; px.len()];
    for y in 0..height {
        for x in 0..width {
            let mut sum = 0u32;
            for (dx, dy) in &offsets {
                let xx = (x as isize + dx).clamp(0, width as isize - 1) as usize;
                let yy = (y as isize + dy).clamp(0, height as isize - 1) as usize;
                sum += u32::from(px[yy * width + xx]);
            }
            out[y * width + x] = (sum / length as u32) as u8;
        }
    }
    out
}

/// The frame as a camera's JPEG encoder at `quality` would leave it.
fn jpeg_round_trip(frame: &LumaFrame, quality: u8) -> LumaFrame {
    let mut bytes = Vec::new();
    let encoded = jpeg_encoder::Encoder::new(&mut bytes, quality).encode(
        frame.pixels(),
        frame.width() as u16,
        frame.height() as u16,
        jpeg_encoder::ColorType::Luma,
    );
    match encoded.ok().and_then(|()| decode_jpeg_luma(&bytes).ok()) {
        Some(decoded) => decoded,
        None => frame.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_is_large_deterministic_and_covers_both_sizes() {
        let specs = specs();
        let fleetkey = specs
            .iter()
            .filter(|s| matches!(s.expected, Expected::Fleetkey(_)))
            .count();
        let nothing = specs
            .iter()
            .filter(|s| s.expected == Expected::Nothing)
            .count();
        assert!(fleetkey >= 300, "{fleetkey} fleetkey frames");
        assert!(nothing >= 20, "{nothing} frames without a code");
        for size in [SMALL, LARGE] {
            assert!(specs.iter().any(|s| (s.width, s.height) == size));
        }
        // The same frames on every run.
        let a = sample("fleetkey-hard").unwrap();
        let b = sample("fleetkey-hard").unwrap();
        assert_eq!(a.frame, b.frame);
        assert_eq!(a.expected, b.expected);
        let names: std::collections::HashSet<&str> =
            specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), specs.len(), "names are unique");
    }
}
