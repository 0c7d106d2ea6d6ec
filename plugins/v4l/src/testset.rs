//! The robustness set: camera-like frames generated deterministically from
//! fleetkey enrollment URIs, foreign QR codes and code-free screens, each
//! with a known answer. The robustness test and the bench
//! (`tests/qr-bench`) both read it.
//!
//! Every frame is 640x480 luma, the size cameras default to: a screen-like
//! background (a window, buttons, lines of text) with the QR code drawn on
//! it through a perspective mapping (rotation, tilt, size), then degraded
//! (blur, noise, low contrast, glare, mirroring, inversion, JPEG).

use fleetkey_proto::{ActivationCode, EnrollmentPayload};
use qrcode::QrCode;
use qrcode::types::Color;

use crate::frame::{LumaFrame, decode_jpeg_luma};

pub const WIDTH: usize = 640;
pub const HEIGHT: usize = 480;

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

/// One frame of the set.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub frame: LumaFrame,
    pub expected: Expected,
}

/// How a code is drawn and degraded.
#[derive(Debug, Clone, Copy)]
struct Look {
    /// Side of the code (quiet zone included) in pixels.
    side: f64,
    rotation_deg: f64,
    /// Perspective: how much narrower the far edge is (0: none).
    tilt: f64,
    blur: usize,
    noise: i32,
    /// Luma of dark and light modules.
    dark: u8,
    light: u8,
    glare: f64,
    mirror: bool,
    invert: bool,
    jpeg_quality: Option<u8>,
}

const CLEAN: Look = Look {
    side: 260.0,
    rotation_deg: 0.0,
    tilt: 0.0,
    blur: 0,
    noise: 0,
    dark: 20,
    light: 235,
    glare: 0.0,
    mirror: false,
    invert: false,
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
    let mut rng = Rng(0x5eed_f1ee_7cee);
    let mut looks: Vec<(&str, Look)> = vec![
        ("clean", CLEAN),
        (
            "rotated-20",
            Look {
                rotation_deg: 20.0,
                ..CLEAN
            },
        ),
        (
            "rotated-45",
            Look {
                rotation_deg: 45.0,
                ..CLEAN
            },
        ),
        (
            "rotated-170",
            Look {
                rotation_deg: 170.0,
                ..CLEAN
            },
        ),
        (
            "tilt-25",
            Look {
                tilt: 0.25,
                ..CLEAN
            },
        ),
        (
            "tilt-40-rotated",
            Look {
                tilt: 0.4,
                rotation_deg: 12.0,
                ..CLEAN
            },
        ),
        ("blur-1", Look { blur: 1, ..CLEAN }),
        (
            "blur-2",
            Look {
                blur: 2,
                side: 300.0,
                ..CLEAN
            },
        ),
        (
            "blur-3",
            Look {
                blur: 3,
                side: 360.0,
                ..CLEAN
            },
        ),
        ("noise-25", Look { noise: 25, ..CLEAN }),
        ("noise-50", Look { noise: 50, ..CLEAN }),
        (
            "contrast-low",
            Look {
                dark: 110,
                light: 160,
                ..CLEAN
            },
        ),
        (
            "contrast-very-low",
            Look {
                dark: 125,
                light: 150,
                noise: 4,
                ..CLEAN
            },
        ),
        (
            "contrast-dim",
            Look {
                dark: 5,
                light: 60,
                ..CLEAN
            },
        ),
        (
            "glare",
            Look {
                glare: 0.75,
                ..CLEAN
            },
        ),
        (
            "glare-strong",
            Look {
                glare: 0.9,
                rotation_deg: 8.0,
                ..CLEAN
            },
        ),
        (
            "mirrored",
            Look {
                mirror: true,
                ..CLEAN
            },
        ),
        (
            "mirrored-rotated",
            Look {
                mirror: true,
                rotation_deg: 30.0,
                tilt: 0.2,
                ..CLEAN
            },
        ),
        (
            "inverted",
            Look {
                invert: true,
                ..CLEAN
            },
        ),
        (
            "inverted-mirrored",
            Look {
                invert: true,
                mirror: true,
                rotation_deg: 10.0,
                ..CLEAN
            },
        ),
        (
            "small-120",
            Look {
                side: 120.0,
                ..CLEAN
            },
        ),
        (
            "small-90",
            Look {
                side: 90.0,
                ..CLEAN
            },
        ),
        (
            "small-75-rotated",
            Look {
                side: 75.0,
                rotation_deg: 15.0,
                ..CLEAN
            },
        ),
        (
            "large-440",
            Look {
                side: 440.0,
                ..CLEAN
            },
        ),
        (
            "jpeg-q60",
            Look {
                jpeg_quality: Some(60),
                ..CLEAN
            },
        ),
        (
            "jpeg-q25",
            Look {
                jpeg_quality: Some(25),
                ..CLEAN
            },
        ),
        (
            "jpeg-q30-small",
            Look {
                jpeg_quality: Some(30),
                side: 140.0,
                ..CLEAN
            },
        ),
        (
            "phone-like",
            Look {
                rotation_deg: 7.0,
                tilt: 0.15,
                blur: 1,
                noise: 12,
                jpeg_quality: Some(70),
                dark: 40,
                light: 200,
                ..CLEAN
            },
        ),
        (
            "dark-mode-far",
            Look {
                invert: true,
                side: 130.0,
                blur: 1,
                noise: 8,
                ..CLEAN
            },
        ),
        (
            "front-camera-dim",
            Look {
                mirror: true,
                dark: 30,
                light: 110,
                noise: 15,
                rotation_deg: -9.0,
                ..CLEAN
            },
        ),
    ];
    // A second pass over every look with other placements and payloads.
    let repeated: Vec<(&str, Look)> = looks.clone();
    looks.extend(repeated);

    let mut samples = Vec::new();
    for (i, (name, look)) in looks.iter().enumerate() {
        let uri = fleetkey_uri(
            &mut rng,
            if i % 2 == 0 {
                "alice"
            } else {
                "bob.smith@example.com"
            },
        );
        if let Some(frame) = render(&mut rng, Some(&uri), look) {
            samples.push(Sample {
                name: format!("fleetkey-{name}-{i}"),
                frame,
                expected: Expected::Fleetkey(uri),
            });
        }
    }
    let foreign = [
        "https://example.com/login?session=42",
        "WIFI:T:WPA;S:office;P:correct horse battery staple;;",
        "fleetkey is great",
    ];
    for (i, text) in foreign.iter().enumerate() {
        let look = Look {
            rotation_deg: 10.0 * i as f64,
            ..CLEAN
        };
        if let Some(frame) = render(&mut rng, Some(text), &look) {
            samples.push(Sample {
                name: format!("foreign-{i}"),
                frame,
                expected: Expected::Foreign(text.to_string()),
            });
        }
    }
    for i in 0..6 {
        let look = Look {
            noise: 10 * i,
            blur: (i % 3) as usize,
            invert: i % 2 == 1,
            ..CLEAN
        };
        if let Some(frame) = render(&mut rng, None, &look) {
            samples.push(Sample {
                name: format!("nothing-{i}"),
                frame,
                expected: Expected::Nothing,
            });
        }
    }
    samples
}

/// Draws one frame.
fn render(rng: &mut Rng, text: Option<&str>, look: &Look) -> Option<LumaFrame> {
    let mut pixels = background(rng);
    if let Some(text) = text
        && let Ok(code) = QrCode::new(text.as_bytes())
    {
        draw_code(rng, &mut pixels, &code, look);
    }
    if look.glare > 0.0 {
        let (cx, cy) = (rng.range(200.0, 440.0), rng.range(150.0, 330.0));
        let radius = rng.range(60.0, 110.0);
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                let d2 = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)) / radius.powi(2);
                let g = look.glare * (-d2).exp();
                let v = f64::from(pixels[y * WIDTH + x]);
                pixels[y * WIDTH + x] = (v + (255.0 - v) * g).round() as u8;
            }
        }
    }
    for _ in 0..2 {
        if look.blur > 0 {
            pixels = box_blur(&pixels, look.blur);
        }
    }
    if look.noise > 0 {
        for p in &mut pixels {
            let n = rng.below(2 * look.noise as u64 + 1) as i32 - look.noise;
            *p = (i32::from(*p) + n).clamp(0, 255) as u8;
        }
    }
    if look.mirror {
        for row in pixels.chunks_exact_mut(WIDTH) {
            row.reverse();
        }
    }
    if look.invert {
        for p in &mut pixels {
            *p = 255 - *p;
        }
    }
    let frame = LumaFrame::new(WIDTH, HEIGHT, pixels).ok()?;
    Some(match look.jpeg_quality {
        Some(quality) => jpeg_round_trip(&frame, quality),
        None => frame,
    })
}

/// A light screen: a gradient, a title bar, buttons and lines of "text".
fn background(rng: &mut Rng) -> Vec<u8> {
    let mut px = vec![0u8; WIDTH * HEIGHT];
    let base = 200.0 + rng.range(0.0, 40.0);
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            px[y * WIDTH + x] = (base - 30.0 * (x + y) as f64 / (WIDTH + HEIGHT) as f64) as u8;
        }
    }
    let fill = |px: &mut Vec<u8>, x0: usize, y0: usize, w: usize, h: usize, v: u8| {
        for y in y0..(y0 + h).min(HEIGHT) {
            for x in x0..(x0 + w).min(WIDTH) {
                px[y * WIDTH + x] = v;
            }
        }
    };
    fill(&mut px, 0, 0, WIDTH, 28, 60);
    for _ in 0..4 {
        let (x, y) = (rng.below(560) as usize, rng.below(440) as usize);
        fill(&mut px, x, y, 70, 24, 90 + rng.below(60) as u8);
    }
    for line in 0..12 {
        let y = 40 + line * 36;
        let mut x = 10 + rng.below(20) as usize;
        while x < WIDTH - 20 {
            let word = 8 + rng.below(40) as usize;
            fill(&mut px, x, y, word, 6, 70);
            x += word + 6;
        }
    }
    px
}

/// Draws the code (with its quiet zone, on a light card) through a
/// perspective mapping, supersampled 3x3 per pixel.
fn draw_code(rng: &mut Rng, px: &mut [u8], code: &QrCode, look: &Look) {
    let modules = code.width();
    let colors = code.to_colors();
    let total = (modules + 8) as f64;
    let half = look.side / 2.0;
    let margin = half * 1.5;
    let cx = rng.range(margin.min(320.0), (WIDTH as f64 - margin).max(320.0));
    let cy = rng.range(margin.min(240.0), (HEIGHT as f64 - margin).max(240.0));
    let (s, c) = look.rotation_deg.to_radians().sin_cos();
    // Corners of the unit square, top edge narrowed by the tilt.
    let unit = [
        (-half * (1.0 - look.tilt), -half),
        (half * (1.0 - look.tilt), -half),
        (half, half),
        (-half, half),
    ];
    let quad: Vec<(f64, f64)> = unit
        .iter()
        .map(|(x, y)| (cx + x * c - y * s, cy + x * s + y * c))
        .collect();
    let Some(to_square) = square_to_quad(&quad).and_then(invert3) else {
        return;
    };
    let (min_x, max_x) = quad
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (min_y, max_y) = quad
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (dark, light) = (f64::from(look.dark), f64::from(look.light));
    for y in (min_y.floor().max(0.0) as usize)..(max_y.ceil().min(HEIGHT as f64) as usize) {
        for x in (min_x.floor().max(0.0) as usize)..(max_x.ceil().min(WIDTH as f64) as usize) {
            let mut inside = 0;
            let mut dark_hits = 0;
            for sy in 0..3 {
                for sx in 0..3 {
                    let (fx, fy) = (
                        x as f64 + (sx as f64 + 0.5) / 3.0,
                        y as f64 + (sy as f64 + 0.5) / 3.0,
                    );
                    let (u, v) = apply(&to_square, fx, fy);
                    if !(0.0..1.0).contains(&u) || !(0.0..1.0).contains(&v) {
                        continue;
                    }
                    inside += 1;
                    let (mx, my) = ((u * total) as isize - 4, (v * total) as isize - 4);
                    if mx >= 0
                        && my >= 0
                        && (mx as usize) < modules
                        && (my as usize) < modules
                        && colors[my as usize * modules + mx as usize] == Color::Dark
                    {
                        dark_hits += 1;
                    }
                }
            }
            if inside > 0 {
                let code_value = (dark * f64::from(dark_hits)
                    + light * f64::from(inside - dark_hits))
                    / f64::from(inside);
                let old = f64::from(px[y * WIDTH + x]);
                let cover = f64::from(inside) / 9.0;
                px[y * WIDTH + x] = (code_value * cover + old * (1.0 - cover)).round() as u8;
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

fn box_blur(px: &[u8], radius: usize) -> Vec<u8> {
    let mut tmp = vec![0u8; px.len()];
    let mut out = vec![0u8; px.len()];
    let blur_line = |get: &dyn Fn(usize) -> u8, len: usize, set: &mut dyn FnMut(usize, u8)| {
        for i in 0..len {
            let (a, b) = (i.saturating_sub(radius), (i + radius + 1).min(len));
            let sum: u32 = (a..b).map(|j| u32::from(get(j))).sum();
            set(i, (sum / (b - a) as u32) as u8);
        }
    };
    for y in 0..HEIGHT {
        blur_line(&|x| px[y * WIDTH + x], WIDTH, &mut |x, v| {
            tmp[y * WIDTH + x] = v
        });
    }
    for x in 0..WIDTH {
        blur_line(&|y| tmp[y * WIDTH + x], HEIGHT, &mut |y, v| {
            out[y * WIDTH + x] = v
        });
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
