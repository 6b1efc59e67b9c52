use crate::map_error_code;

use std::io;
use zstd_safe;

/// Allows to compress independently multiple chunks of data.
///
/// Each job will be processed entirely in-memory without streaming, so this
/// is most fitting for many small jobs. To compress larger volume that don't
/// easily fit in memory, a streaming compression may be more appropriate.
///
/// It is more efficient than a streaming compressor for 2 reasons:
/// * It re-uses the zstd context between jobs to avoid re-allocations
/// * It avoids copying data from a `Read` into a temporary buffer before compression.
pub struct Compressor<'a> {
    // Silverline's patch (PATCHED.md): a compressor that has nothing but a
    // compression level (no dictionary, no other parameter) holds no zstd
    // context of its own and compresses with one context per thread, shared
    // by every such compressor on that thread. Its own context is created when
    // first needed: by a dictionary, a parameter or `context_mut`.
    context: Option<zstd_safe::CCtx<'a>>,
    /// `Some(level)` while the compressor is plain: its jobs run on the
    /// calling thread's shared context, at this level.
    shared_level: Option<i32>,
}

impl Default for Compressor<'_> {
    fn default() -> Self {
        // Level 0 is zstd's default, as for a fresh context.
        Compressor {
            context: None,
            shared_level: Some(0),
        }
    }
}

thread_local! {
    /// Silverline's patch: the context the plain compressors of a thread
    /// compress with. Only the compression level is ever set on it (before
    /// every job), so a job's output is that of a fresh context at its level.
    static SHARED: std::cell::RefCell<Option<zstd_safe::CCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs a job: `compress2` on `context`, abandoning a failed frame.
fn compress_with<C: zstd_safe::WriteBuf + ?Sized>(
    context: &mut zstd_safe::CCtx<'_>,
    source: &[u8],
    destination: &mut C,
) -> io::Result<usize> {
    let result = context.compress2(destination, source);
    if result.is_err() {
        // `compress2` leaves a failed frame open, and zstd refuses most
        // setters mid-frame. Abandon it, so the compressor can be set up
        // for the next job. Resetting only the session cannot fail (it
        // waits for the worker threads, if any).
        let _ = context.reset(zstd_safe::ResetDirective::SessionOnly);
    }
    result.map_err(map_error_code)
}

impl Compressor<'static> {
    /// Creates a new zstd compressor
    pub fn new(level: i32) -> io::Result<Self> {
        Self::with_dictionary(level, &[])
    }

    /// Creates a new zstd compressor, using the given dictionary.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn with_dictionary(level: i32, dictionary: &[u8]) -> io::Result<Self> {
        let mut compressor = Self::default();

        compressor.set_dictionary(level, dictionary)?;

        Ok(compressor)
    }
}

impl<'a> Compressor<'a> {
    /// Its own context, created on first use with the level it had while
    /// plain; from then on it is no longer plain.
    fn own(&mut self) -> &mut zstd_safe::CCtx<'a> {
        let level = self.shared_level.take();
        self.context.get_or_insert_with(|| {
            let mut context = zstd_safe::CCtx::default();
            if let Some(level) = level {
                // zstd clamps a level to its bounds: setting it on a fresh
                // context does not fail.
                let _ = context.set_parameter(
                    zstd_safe::CParameter::CompressionLevel(level),
                );
            }
            context
        })
    }

    /// Creates a new compressor using an existing `EncoderDictionary`.
    ///
    /// The compression level will be the one specified when creating the dictionary.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn with_prepared_dictionary<'b>(
        dictionary: &'a crate::dict::EncoderDictionary<'b>,
    ) -> io::Result<Self>
    where
        'b: 'a,
    {
        let mut compressor = Self::default();

        compressor.set_prepared_dictionary(dictionary)?;

        Ok(compressor)
    }

    /// Changes the compression level used by this compressor.
    ///
    /// *This will clear any dictionary previously registered.*
    ///
    /// If you want to keep the existing dictionary, you will need to pass it again to
    /// `Self::set_dictionary` instead of using this method.
    pub fn set_compression_level(&mut self, level: i32) -> io::Result<()> {
        self.set_dictionary(level, &[])
    }

    /// Changes the dictionary and compression level used by this compressor.
    ///
    /// Will affect future compression jobs.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn set_dictionary(
        &mut self,
        level: i32,
        dictionary: &[u8],
    ) -> io::Result<()> {
        if dictionary.is_empty() && self.context.is_none() {
            // Still plain (zstd clamps a level out of its bounds, so there
            // is nothing to refuse here that a context would refuse).
            self.shared_level = Some(level);
            return Ok(());
        }

        let context = self.own();
        context
            .set_parameter(zstd_safe::CParameter::CompressionLevel(level))
            .map_err(map_error_code)?;

        context
            .load_dictionary(dictionary)
            .map_err(map_error_code)?;

        Ok(())
    }

    /// Changes the dictionary used by this compressor.
    ///
    /// The compression level used when preparing the dictionary will be used.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn set_prepared_dictionary<'b>(
        &mut self,
        dictionary: &'a crate::dict::EncoderDictionary<'b>,
    ) -> io::Result<()>
    where
        'b: 'a,
    {
        self.own()
            .ref_cdict(dictionary.as_cdict())
            .map_err(map_error_code)?;

        Ok(())
    }

    /// Compress a single block of data to the given destination buffer.
    ///
    /// Returns the number of bytes written, or an error if something happened
    /// (for instance if the destination buffer was too small). A failed job
    /// is abandoned, and the compressor can be set up again for the next one.
    /// With worker threads (see `multithread`), abandoning a job waits for
    /// them to be done with it.
    ///
    /// A level of `0` uses zstd's default (currently `3`).
    /// [`crate::compress_bound()`] says how large `destination` might need to
    /// be. For a `Vec` it is the *capacity* that bounds the output, so
    /// `reserve` what you need rather than `resize` - the bytes do not have to
    /// be initialized first.
    pub fn compress_to_buffer<C: zstd_safe::WriteBuf + ?Sized>(
        &mut self,
        source: &[u8],
        destination: &mut C,
    ) -> io::Result<usize> {
        if let Some(level) = self.shared_level {
            // Gone while the thread's locals are destroyed, busy only if a job
            // ran inside a job: then the compressor uses its own context.
            let shared = SHARED.try_with(|shared| {
                let mut shared = shared.try_borrow_mut().ok()?;
                let context =
                    shared.get_or_insert_with(zstd_safe::CCtx::default);
                Some(
                    context
                        .set_parameter(zstd_safe::CParameter::CompressionLevel(
                            level,
                        ))
                        .map_err(map_error_code)
                        .and_then(|_| {
                            compress_with(context, source, destination)
                        }),
                )
            });
            if let Ok(Some(result)) = shared {
                return result;
            }
        }
        compress_with(self.own(), source, destination)
    }

    /// Compresses a block of data and returns the compressed result.
    ///
    /// A level of `0` uses zstd's default (currently `3`).
    pub fn compress(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        // We allocate a big buffer, slightly larger than the input data.
        let buffer_len = zstd_safe::compress_bound(data.len());
        let mut buffer = crate::vec_with_capacity(buffer_len)?;

        self.compress_to_buffer(data, &mut buffer)?;

        // Should we shrink the vec? Meh, let the user do it if he wants.
        Ok(buffer)
    }

    /// Gives mutable access to the internal context.
    pub fn context_mut(&mut self) -> &mut zstd_safe::CCtx<'a> {
        self.own()
    }

    /// Sets a compression parameter for this compressor.
    pub fn set_parameter(
        &mut self,
        parameter: zstd_safe::CParameter,
    ) -> io::Result<()> {
        self.own()
            .set_parameter(parameter)
            .map_err(map_error_code)?;
        Ok(())
    }

    /// Sets the expected size of the input.
    ///
    /// This affects the compression effectiveness.
    ///
    /// It is an error to give an incorrect size (an error will be returned when closing the
    /// stream if the size does not match what was pledged).
    ///
    /// Giving a `None` size means the size is unknown (this is the default).
    pub fn set_pledged_src_size(
        &mut self,
        size: Option<u64>,
    ) -> io::Result<()> {
        self.own()
            .set_pledged_src_size(size)
            .map_err(map_error_code)?;
        Ok(())
    }

    crate::encoder_parameters!();
}

fn _assert_traits() {
    fn _assert_send<T: Send>(_: T) {}

    _assert_send(Compressor::new(0));
}

#[cfg(test)]
mod silverline_tests {
    use super::*;

    const TEXT: &str = include_str!("../../assets/example.txt");

    /// A compressor with its own context (a parameter set to its default
    /// makes it so), at `level`.
    fn with_own_context(level: i32) -> Compressor<'static> {
        let mut compressor = Compressor::new(level).unwrap();
        compressor.include_checksum(false).unwrap();
        assert!(compressor.context.is_some() && compressor.shared_level.is_none());
        compressor
    }

    fn frame(compressor: &mut Compressor<'_>, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
        compressor.compress_to_buffer(data, &mut out).unwrap();
        out
    }

    // Silverline's patch (PATCHED.md): plain compressors hold no context and
    // write, interleaved at different levels on one thread, the very bytes a
    // compressor with its own context writes at their level.
    #[test]
    fn plain_compressors_share_the_threads_context_and_write_the_same_frames() {
        let data = TEXT.as_bytes();
        let mut plain: Vec<Compressor<'static>> =
            [1, 3, 19, -5, 0].iter().map(|&l| Compressor::new(l).unwrap()).collect();
        for _ in 0..2 {
            for (compressor, level) in plain.iter_mut().zip([1, 3, 19, -5, 0]) {
                let out = frame(compressor, data);
                assert!(compressor.context.is_none(), "level {} made its own context", level);
                assert_eq!(out, frame(&mut with_own_context(level), data), "level {level}");
                assert_eq!(crate::bulk::decompress(&out, data.len()).unwrap(), data);
            }
        }
        // The levels differ, or the comparison above would prove nothing.
        assert_ne!(frame(&mut plain[0], data), frame(&mut plain[2], data));
        // The default compressor is zstd's default level, as a fresh context.
        assert_eq!(frame(&mut Compressor::default(), data), frame(&mut with_own_context(0), data));
    }

    // A job that fails (the destination is too small) leaves the shared
    // context ready for the next job, of this compressor or another. (zstd's
    // `compress2` also starts every job with a session reset; this holds the
    // patch to that whatever zstd does.)
    #[test]
    fn a_failed_job_on_the_shared_context_spoils_no_later_job() {
        let data = TEXT.as_bytes();
        let mut compressor = Compressor::new(3).unwrap();
        let mut small = Vec::with_capacity(8);
        assert!(compressor.compress_to_buffer(data, &mut small).is_err());
        assert_eq!(frame(&mut compressor, data), frame(&mut with_own_context(3), data));
        assert_eq!(frame(&mut Compressor::new(1).unwrap(), data), frame(&mut with_own_context(1), data));
    }

    // A dictionary or any parameter gives the compressor its own context,
    // with the level it had; frames then carry what was asked for.
    #[test]
    fn a_dictionary_or_a_parameter_gives_a_compressor_its_own_context() {
        let data = TEXT.as_bytes();
        let dictionary = &data[..data.len() / 2];
        let mut with_dictionary = Compressor::with_dictionary(3, dictionary).unwrap();
        assert!(with_dictionary.context.is_some() && with_dictionary.shared_level.is_none());
        let out = frame(&mut with_dictionary, data);
        let mut decompressor = crate::bulk::Decompressor::with_dictionary(dictionary).unwrap();
        assert_eq!(decompressor.decompress(&out, data.len()).unwrap(), data);
        assert!(crate::bulk::decompress(&out, data.len()).is_err(), "the dictionary was not used");

        let mut checksummed = Compressor::new(19).unwrap();
        checksummed.include_checksum(true).unwrap();
        let out = frame(&mut checksummed, data);
        assert_eq!(out.len(), frame(&mut with_own_context(19), data).len() + 4, "no checksum");
        assert_eq!(crate::bulk::decompress(&out, data.len()).unwrap(), data);
        // The level it had while plain was kept: 19, not zstd's default.
        checksummed.include_checksum(false).unwrap();
        assert_eq!(frame(&mut checksummed, data), frame(&mut with_own_context(19), data));

        // Back to no dictionary: the compressor keeps its own context (and
        // any parameter set on it), as before the patch.
        with_dictionary.set_dictionary(1, &[]).unwrap();
        assert!(with_dictionary.context.is_some());
        assert_eq!(frame(&mut with_dictionary, data), frame(&mut with_own_context(1), data));
    }

    // A parameter set on one compressor never reaches the thread's shared
    // context: plain compressors on the same thread, before and after it,
    // write the frames of a fresh context.
    #[test]
    fn a_parameter_of_one_compressor_never_reaches_the_shared_context() {
        let data = TEXT.as_bytes();
        let expected = frame(&mut with_own_context(3), data);
        assert_eq!(frame(&mut Compressor::new(3).unwrap(), data), expected);
        let mut checksummed = Compressor::new(3).unwrap();
        checksummed.include_checksum(true).unwrap();
        checksummed.set_pledged_src_size(Some(data.len() as u64)).unwrap();
        checksummed.window_log(10).unwrap();
        let with_parameters = frame(&mut checksummed, data);
        assert_ne!(with_parameters, expected, "the parameters changed nothing");
        assert_eq!(frame(&mut Compressor::new(3).unwrap(), data), expected);
    }

    // A plain compressor made on one thread compresses on another with that
    // thread's context.
    #[test]
    fn a_plain_compressor_moved_to_another_thread_compresses_there() {
        let data = TEXT.as_bytes();
        let mut compressor = Compressor::new(5).unwrap();
        let here = frame(&mut compressor, data);
        let there = std::thread::spawn(move || frame(&mut compressor, TEXT.as_bytes())).join().unwrap();
        assert_eq!(here, there);
    }
}
