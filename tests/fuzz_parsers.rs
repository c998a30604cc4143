//! Mutation fuzzing of every parser of untrusted bytes: `.npy` arrays, safetensors checkpoints,
//! CIFAR-10 record files, `config.json`, `log.jsonl`, `corrupt.json`, corruption reports and the
//! frost wheel. Each starts from a valid file written by the real writer, applies a few seeded
//! mutations per case (bit flips, interesting integers, cuts, splices, huge numbers in text), and
//! feeds the result through the public entry point. A fixed number of cases runs in CI.
//!
//! What must hold for every case: no panic, no case slower than [`CASE_TIME_LIMIT`] (a hang
//! aborts the run, naming the case), and no more than [`HEAP_LIMIT`] bytes of heap in use at
//! once above what was in use before the case (a counting allocator measures it). A failing
//! input is written to `target/fuzz-failures/` for reproduction. `MOCSE_FUZZ_CASES=N` scales
//! the case counts (default 1 = the CI counts; `MOCSE_FUZZ_SEED` picks other mutations).

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mocse::checkpoint::{self, Progress, RunRecord};
use mocse::data::{DataSpec, Dataset, Split};
use mocse::nn::model::{Model, ModelConfig, ModelKind};
use mocse::ops::aggregate::Aggregate;

/// The most heap a parse may hold at once, beyond what was in use before it.
const HEAP_LIMIT: usize = 64 << 20;
/// The longest a parse may take.
const CASE_TIME_LIMIT: Duration = Duration::from_secs(20);

// ---- a heap that is measured ----

struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now =
                IN_USE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            IN_USE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One target at a time, so the heap measured is the parse's own.
static SERIAL: Mutex<()> = Mutex::new(());

// ---- deterministic mutations ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];
const TEXT_NUMBERS: [&str; 9] =
    ["18446744073709551616", "-1", "1e309", "NaN", "0", "2305843009213693951", "4294967296", "-0", "1e-400"];

/// Applies 1-4 mutations to `data`; text-aware ones too when `text`.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, text: bool) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(if text { 10 } else { 8 }) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = INTERESTING[rng.below(5)] as u8;
            }
            2 if len >= 8 => {
                let width = [2, 4, 8][rng.below(3)];
                let i = rng.below(len - width + 1);
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                data[i..i + width].copy_from_slice(&v[..width]);
            }
            3 => data.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                let (a, b) = (rng.below(len), rng.below(len));
                let (a, b) = (a.min(b), a.max(b));
                data.drain(a..b.min(a + 4096));
            }
            5 if len > 0 => {
                let (a, n) = (rng.below(len), 1 + rng.below(64));
                let chunk: Vec<u8> = data[a..(a + n).min(len)].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, chunk);
            }
            6 => {
                let n = rng.below(256);
                let at = rng.below(len + 1);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, junk);
            }
            7 => data.extend((0..rng.below(4096)).map(|_| rng.next() as u8)),
            8 => {
                // A number in the text replaced by an extreme one.
                let digits: Vec<usize> = (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
                if let Some(&i) = digits.get(rng.below(digits.len())) {
                    let mut end = i;
                    while end < len && (data[end].is_ascii_digit() || data[end] == b'.') {
                        end += 1;
                    }
                    let mut start = i;
                    while start > 0 && data[start - 1].is_ascii_digit() {
                        start -= 1;
                    }
                    data.splice(start..end, TEXT_NUMBERS[rng.below(TEXT_NUMBERS.len())].bytes());
                }
            }
            _ => {
                // Deep nesting or a long string.
                let at = rng.below(len + 1);
                let filler: Vec<u8> = if rng.below(2) == 0 {
                    vec![b'['; 1 + rng.below(100_000)]
                } else {
                    vec![b'a'; rng.below(1 << 20)]
                };
                data.splice(at..at, filler);
            }
        }
    }
}

// ---- the harness ----

fn scale() -> usize {
    std::env::var("MOCSE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

fn seed() -> u64 {
    std::env::var("MOCSE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x006d_6f63_7365)
}

fn failure_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures")
}

/// Runs `cases` mutated variants of `valid` through `parse` (which gets the case's bytes and a
/// scratch directory) and checks the three properties; `text` enables the text mutations.
fn fuzz(name: &str, cases: usize, valid: &[u8], text: bool, parse: impl Fn(&[u8], &Path)) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases = cases * scale();
    let mut rng = Rng(seed() ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let scratch = tempfile::tempdir().unwrap();

    // A watchdog: a case running past the limit is a hang; abort and name it.
    let current =
        std::sync::Arc::new((AtomicU64::new(u64::MAX), AtomicBool::new(false), Mutex::new(Vec::new())));
    let watch = current.clone();
    let label = name.to_string();
    let started = Instant::now();
    let dog = std::thread::spawn(move || {
        while !watch.1.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            let case_start = watch.0.load(Ordering::Relaxed);
            if case_start != u64::MAX
                && started.elapsed().as_millis() as u64 - case_start > CASE_TIME_LIMIT.as_millis() as u64
            {
                let kept = failure_dir().join(format!("{label}-hang"));
                let _ = std::fs::create_dir_all(failure_dir());
                let _ = std::fs::write(&kept, &*watch.2.lock().unwrap_or_else(|e| e.into_inner()));
                eprintln!(
                    "fuzz {label}: a case ran longer than {CASE_TIME_LIMIT:?}: a hang; its input is in {}",
                    kept.display()
                );
                std::process::abort();
            }
        }
    });

    // The valid file itself must parse without trouble too (case 0).
    let mut worst = (0usize, 0usize);
    for case in 0..=cases {
        let mut data = valid.to_vec();
        if case > 0 {
            mutate(&mut rng, &mut data, text);
        }
        let dir = scratch.path().join(format!("case{case}"));
        std::fs::create_dir(&dir).unwrap();
        current.2.lock().unwrap_or_else(|e| e.into_inner()).clone_from(&data);
        let before = IN_USE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        current.0.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| parse(&data, &dir)));
        current.0.store(u64::MAX, Ordering::Relaxed);
        let used = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        worst = worst.max((used, case));
        let problem = match outcome {
            Err(_) => Some("panicked".to_string()),
            Ok(()) if used > HEAP_LIMIT => Some(format!("held {used} bytes of heap (limit {HEAP_LIMIT})")),
            Ok(()) => None,
        };
        if let Some(problem) = problem {
            std::fs::create_dir_all(failure_dir()).unwrap();
            let kept = failure_dir().join(format!("{name}-case{case}"));
            std::fs::write(&kept, &data).unwrap();
            current.1.store(true, Ordering::Relaxed);
            panic!("fuzz {name}: case {case} {problem}; its input is in {}", kept.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    current.1.store(true, Ordering::Relaxed);
    dog.join().unwrap();
    eprintln!(
        "fuzz {name}: {cases} cases in {:.1} s, largest heap held {} KiB (case {})",
        started.elapsed().as_secs_f64(),
        worst.0 >> 10,
        worst.1
    );
}

// ---- the targets ----

#[test]
fn npy_files() {
    let pixels: Vec<u8> = (0..3 * 32 * 32 * 3).map(|i| (i * 7) as u8).collect();
    let valid = mocse::npy::u8_npy_bytes(&[3, 32, 32, 3], &pixels).unwrap();
    fuzz("npy", 4000, &valid, true, |bytes, dir| {
        let path = dir.join("images.npy");
        std::fs::write(&path, bytes).unwrap();
        if let Ok(file) = mocse::npy::NpyU8::open(&path) {
            // Whatever opens must be fully readable as the shape says.
            let n: usize = file.shape().iter().product();
            assert_eq!(file.data().len(), n);
            let _ = file.data().iter().map(|&v| v as u64).sum::<u64>();
        }
        // The corrupt command's own loader on top of it.
        let input = mocse::corrupt::export::ImageInput::Npy(path);
        let _ = mocse::corrupt::export::CleanImages::load(&input, Some(2), 0);
    });
}

fn tiny_model() -> Model {
    Model::new(ModelConfig {
        kind: ModelKind::Mocse,
        num_classes: 10,
        width: 1,
        aggregate: Aggregate::Prob,
        bce_weight: 1.0,
    })
}

#[test]
fn safetensors_checkpoints() {
    let model = tiny_model();
    let net = model.fused();
    let weights = net.init_weights(3, [0.5; 3], [0.25; 3]);
    let velocity: Vec<_> =
        weights.params.iter().map(|p| mocse::tensor::Tensor::full(p.shape(), 0.01)).collect();
    let source = tempfile::tempdir().unwrap();
    let record = RunRecord { config: Some("{}".into()), epoch_log: Some("{}".into()) };
    checkpoint::save_checkpoint(
        source.path(),
        net,
        &weights,
        &velocity,
        Progress { epoch: 1, step: 4 },
        &record,
    )
    .unwrap();
    let model_bytes = std::fs::read(source.path().join(checkpoint::MODEL_FILE)).unwrap();
    let state_bytes = std::fs::read(source.path().join(checkpoint::TRAINING_STATE_FILE)).unwrap();
    // Both files of the pair, mutated one at a time (the first byte of the case picks which is
    // kept intact, so mutations of either are reached).
    for (name, valid, other, other_name) in [
        ("checkpoint-model", &model_bytes, &state_bytes, checkpoint::TRAINING_STATE_FILE),
        ("checkpoint-state", &state_bytes, &model_bytes, checkpoint::MODEL_FILE),
    ] {
        let main_name = if other_name == checkpoint::MODEL_FILE {
            checkpoint::TRAINING_STATE_FILE
        } else {
            checkpoint::MODEL_FILE
        };
        fuzz(name, 700, valid, false, |bytes, dir| {
            std::fs::write(dir.join(main_name), bytes).unwrap();
            std::fs::write(dir.join(other_name), other).unwrap();
            let _ = checkpoint::load_model(&dir.join(checkpoint::MODEL_FILE), net);
            let _ = checkpoint::load_checkpoint(dir, net);
        });
    }
}

#[test]
fn cifar10_record_files() {
    // One full-size test file, mutated in place (its size is fixed by the format): labels and
    // pixels changed, the file cut or grown. A mutation is a list of edits applied and undone.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test_batch.bin");
    let records = 10_000usize;
    let mut bytes = vec![0u8; records * 3073];
    for (i, r) in bytes.chunks_exact_mut(3073).enumerate() {
        r[0] = (i % 10) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    let spec = DataSpec::Cifar10(dir.path().to_path_buf());
    // The case's bytes encode the edits: (offset, value) pairs and an optional new length.
    let mut rng = Rng(seed());
    let mut plan = Vec::new();
    for _ in 0..8 {
        plan.extend_from_slice(&(rng.next() % (records as u64 * 3073)).to_le_bytes());
    }
    fuzz("cifar10", 400, &plan, false, |edits, _| {
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut undo = Vec::new();
        let words: Vec<u64> =
            edits.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let cut = words.first().filter(|w| *w % 5 == 0).map(|w| (w >> 8) % (records as u64 * 3073 + 100));
        for w in words.iter().skip(1) {
            let at = (w >> 8) % (records as u64 * 3073);
            let value = (*w & 0xff) as u8;
            undo.push((at, bytes[at as usize]));
            std::os::unix::fs::FileExt::write_at(&file, &[value], at).unwrap();
        }
        if let Some(len) = cut {
            file.set_len(len).unwrap();
        }
        let subset = 1 + (words.iter().sum::<u64>() % records as u64) as usize;
        if let Ok(data) = Dataset::load(&spec, Split::Test, Some(subset), 0) {
            let mut img = vec![0u8; 3072];
            for i in [0, data.len() / 2, data.len() - 1] {
                data.image_u8(i, &mut img);
            }
            assert!(data.labels().iter().all(|&l| l < 10));
        }
        file.set_len(bytes.len() as u64).unwrap();
        for (at, value) in undo {
            std::os::unix::fs::FileExt::write_at(&file, &[value], at).unwrap();
        }
    });
}

#[test]
fn run_config_and_log() {
    let config = mocse::train::TrainConfig {
        model: tiny_model().config,
        data: "synthetic".into(),
        train_subset: Some(64),
        test_subset: None,
        augment: "standard".into(),
        jsd: None,
        epochs: 3,
        batch_size: 32,
        lr: 0.1,
        sgd: mocse::ops::sgd::SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false },
        schedule: mocse::train::Schedule::Cosine,
        seed: 1,
        save_every: Some(2),
        mode: mocse::train::TrainingMode::Trades(mocse::train::AdversarialTraining {
            norm: mocse::attack::Norm::Linf,
            eps: 8.0 / 255.0,
            alpha: 0.007,
            steps: 10,
            bn: mocse::attack::BnMode::Eval,
            eval_subset: 1000,
            beta: Some(6.0),
            early_stop: false,
        }),
        created_by: "mocse fuzz".into(),
    };
    let valid = serde_json::to_string_pretty(&config).unwrap();
    fuzz("config.json", 3000, valid.as_bytes(), true, |bytes, dir| {
        std::fs::write(dir.join("config.json"), bytes).unwrap();
        if let Ok(c) = mocse::train::read_config(dir) {
            // A config that reads must be one the program can size without trouble.
            if c.model.check_fits(c.batch_size, mocse::device::Device::Cpu).is_ok() {
                let _ = Model::new(c.model).fused().num_parameters();
            }
        }
    });
    let line = r#"{"epoch":1,"train_loss":2.25,"train_accuracy":0.125,"test_accuracy":0.1,"lr":0.1,"seconds":1.5,"images_per_s":100.0}"#;
    let valid = format!("{line}\n{}\n", line.replace("\"epoch\":1", "\"epoch\":2"));
    fuzz("log.jsonl", 2000, valid.as_bytes(), true, |bytes, dir| {
        std::fs::write(dir.join("log.jsonl"), bytes).unwrap();
        let _ = mocse::train::read_log(dir);
    });
}

#[test]
fn cifar10c_manifest_and_labels() {
    let manifest = mocse::data::cifar10c::CorruptManifest {
        input: "synthetic (test split)".into(),
        num_images: 4,
        severities: vec![1, 3],
        seed: 0,
        corruptions: vec!["fog".into()],
        mocse: "fuzz".into(),
    };
    let valid = serde_json::to_string_pretty(&manifest).unwrap();
    let labels = mocse::npy::u8_npy_bytes(&[8], &[1, 2, 3, 4, 1, 2, 3, 4]).unwrap();
    fuzz("corrupt.json", 2000, valid.as_bytes(), true, |bytes, dir| {
        std::fs::write(dir.join("corrupt.json"), bytes).unwrap();
        std::fs::write(dir.join("labels.npy"), &labels).unwrap();
        let _ = mocse::data::cifar10c::read_manifest(dir);
        if let Ok(set) = mocse::data::cifar10c::Cifar10C::open(dir) {
            assert_eq!(set.images_per_severity() * set.severities().len(), 8);
        }
    });
}

/// A MoCSE's predicted classes and experts on a few clean and fog images, for a report to mutate.
fn expert_diagnostics() -> mocse::diagnostics::DiagnosticCounts {
    use mocse::corrupt::Corruption;
    let classes = (0..10).map(|i| format!("class {i}")).collect();
    let mut counts =
        mocse::diagnostics::DiagnosticCounts::new(classes, Some(mocse::ops::aggregate::Aggregate::Prob));
    let scores = mocse::tensor::Tensor::from_vec(&[2, 10], (0..20).map(|i| (i % 7) as f32 / 7.0).collect());
    counts.add_clean(&scores, &[1, 2]).unwrap();
    counts.add_corrupted(Corruption::Fog, 1, &scores, &[3, 4]).unwrap();
    counts.add_corrupted(Corruption::Fog, 2, &scores, &[5, 6]).unwrap();
    counts
}

#[test]
fn corruption_reports() {
    use mocse::corrupt::Corruption;
    let counts = mocse::robustness::CorruptionCounts {
        num_images: 10,
        clean: 7,
        clean_confusion: mocse::eval::ConfusionCounts::new(10),
        corrupted: [((Corruption::Fog, 1u8), 5usize), ((Corruption::Fog, 2), 4)].into_iter().collect(),
        diagnostics: expert_diagnostics(),
    };
    let context = mocse::eval::RunDescription {
        model: "mocse".into(),
        model_description: "MoCSE".into(),
        run: "runs/x".into(),
        checkpoint_epoch: Some(3),
        data: "synthetic".into(),
        device: "cpu".into(),
    };
    let report = mocse::robustness::CorruptionReport::new(context, "generated".into(), &counts, &[1, 2]);
    let valid = serde_json::to_string_pretty(&report).unwrap();
    fuzz("report", 2000, valid.as_bytes(), true, |bytes, dir| {
        let path = dir.join("r.json");
        std::fs::write(&path, bytes).unwrap();
        if let Ok(r) = mocse::compare::read_report(&path) {
            let columns = [
                mocse::compare::Column { label: "a".into(), report: r.clone(), robust: None },
                mocse::compare::Column { label: "b".into(), report: r, robust: None },
            ];
            let options = mocse::compare::TableOptions {
                difference: true,
                accepted_incomparabilities: mocse::compare::incomparabilities(&columns),
            };
            let _ = mocse::compare::table1_markdown(&columns, &options);
            let _ = mocse::compare::severity_chart_data(&columns);
            let _ = mocse::diagnostics::figures::corruption_figures(&columns[0].report);
        }
    });
}

#[test]
fn frost_wheels() {
    use std::io::Write;
    // A wheel with the five entries (not the real photographs, which are not ours to ship):
    // every case is refused at the latest by the SHA-256 check, after the zip parser and the
    // size limits have had their go at it.
    let mut valid = Vec::new();
    {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut valid));
        for (i, name) in
            ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"].iter().enumerate()
        {
            let method =
                if i % 2 == 0 { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
            zip.start_file(
                format!("imagecorruptions/frost/{name}"),
                zip::write::SimpleFileOptions::default().compression_method(method),
            )
            .unwrap();
            zip.write_all(&vec![i as u8; 3000 + 500 * i]).unwrap();
        }
        zip.finish().unwrap();
    }
    fuzz("frost-wheel", 1500, &valid, false, |bytes, dir| {
        let wheel = dir.join("imagecorruptions-1.1.2-py3-none-any.whl");
        std::fs::write(&wheel, bytes).unwrap();
        let result = mocse::corrupt::frost::extract_from_wheel(&wheel, &dir.join("out"));
        assert!(result.is_err(), "a wheel without the real photographs was accepted");
    });
}
