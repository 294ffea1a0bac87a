//! The `files.zip` archive of a session's files.
//!
//! Owns writing the archive: into an unnamed temporary file (created in the store's partial
//! directory and unlinked at once), so that it takes no memory and leaves nothing behind
//! however the download ends. Reads only the files it is given.

use std::io::{Seek, SeekFrom};
use std::path::Path;

use zip::CompressionMethod;
use zip::write::{SimpleFileOptions, ZipWriter};

use super::{FileError, FileInfo, FileStore, PARTIAL_DIR};

impl FileStore {
    /// A zip archive of `files` (from [`FileStore::list`]), ready to be read from its start,
    /// with its length.
    pub(crate) async fn archive(
        &self,
        files: Vec<FileInfo>,
    ) -> Result<(tokio::fs::File, u64), FileError> {
        let partial = self.root.join(PARTIAL_DIR);
        let (file, len) = tokio::task::spawn_blocking(move || write(&partial, &files))
            .await
            .map_err(|e| FileError::Io(e.to_string()))??;
        Ok((tokio::fs::File::from_std(file), len))
    }
}

fn write(partial: &Path, files: &[FileInfo]) -> Result<(std::fs::File, u64), FileError> {
    let path = partial.join(format!("{}.zip", uuid::Uuid::new_v4()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    let mut zip = ZipWriter::new(file);
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .large_file(true);
    for info in files {
        // A file deleted since it was listed is left out.
        let Ok(mut source) = std::fs::File::open(&info.path) else {
            continue;
        };
        zip.start_file(info.name.as_str(), options)
            .map_err(|e| FileError::Io(e.to_string()))?;
        std::io::copy(&mut source, &mut zip)?;
    }
    let mut file = zip.finish().map_err(|e| FileError::Io(e.to_string()))?;
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    Ok((file, len))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn the_archive_holds_every_file_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            FileStore::new(dir.path().join("files"), Duration::from_secs(60), 1 << 20).unwrap();
        let id = uuid::Uuid::new_v4();
        store.prepare(id).await.unwrap();
        for (name, body) in [("a.txt", "alpha"), ("sub/b.txt", "beta")] {
            let mut upload = store.begin_upload(id).await.unwrap();
            upload.write(body.as_bytes()).await.unwrap();
            upload.finish(&store.name(id, name).unwrap()).await.unwrap();
        }
        let (mut file, len) = store.archive(store.list(id).await.unwrap()).await.unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(bytes.len() as u64, len);
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["a.txt", "sub/b.txt"]);
        let mut beta = String::new();
        std::io::Read::read_to_string(&mut zip.by_name("sub/b.txt").unwrap(), &mut beta).unwrap();
        assert_eq!(beta, "beta");
        assert_eq!(
            std::fs::read_dir(dir.path().join("files").join(PARTIAL_DIR))
                .unwrap()
                .count(),
            0,
            "the archive's file is unlinked"
        );
    }
}
