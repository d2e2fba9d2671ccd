/*
 * The minute_bars job's input format: each record is a block of whole lines (about 4 MiB), not one line.
 *
 * With TextInputFormat, Hadoop Streaming's Java side reads every line of the split into a Text and writes
 * it to the mapper's stdin one at a time: for a 4.7 M-trade day that per-line work took more CPU than the
 * Python mapper itself. The mapper reads its stdin in blocks of whole lines anyway (mapper.py), so this
 * format hands it the split's bytes as they are, in blocks cut at line ends, and the streaming side writes
 * each block with the newline it ends on.
 *
 * A split owns the same lines as with TextInputFormat (LineRecordReader's rule): a line belongs to the split
 * its first byte is in, except that a line starting exactly at a split's start belongs to the split before
 * (which reads one line past its end). So the bars are the same with either format.
 *
 * The job sets -inputformat btc.mapreduce.LineBlockInputFormat and stream.map.input.ignoreKey=true (the key,
 * a block's offset, is not written to the mapper). btc.lineblock.bytes sets the block size. Compressed
 * files are not split and are read whole through their codec.
 *
 * Built by btc_assets/clients/hadoop_streaming.py (javac against the Hadoop jars) into the cache.
 */
package btc.mapreduce;

import java.io.IOException;
import java.io.InputStream;

import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.io.LongWritable;
import org.apache.hadoop.io.Text;
import org.apache.hadoop.io.compress.CompressionCodec;
import org.apache.hadoop.io.compress.CompressionCodecFactory;
import org.apache.hadoop.mapred.FileInputFormat;
import org.apache.hadoop.mapred.FileSplit;
import org.apache.hadoop.mapred.InputSplit;
import org.apache.hadoop.mapred.JobConf;
import org.apache.hadoop.mapred.RecordReader;
import org.apache.hadoop.mapred.Reporter;

public class LineBlockInputFormat extends FileInputFormat<LongWritable, Text> {

  public static final String BLOCK_BYTES = "btc.lineblock.bytes";
  public static final int DEFAULT_BLOCK_BYTES = 4 << 20;

  @Override
  protected boolean isSplitable(FileSystem fs, Path file) {
    return new CompressionCodecFactory(fs.getConf()).getCodec(file) == null;
  }

  @Override
  public RecordReader<LongWritable, Text> getRecordReader(InputSplit split, JobConf job, Reporter reporter)
      throws IOException {
    reporter.setStatus(split.toString());
    return new LineBlockReader(job, (FileSplit) split);
  }

  /** Blocks of whole lines from one split; the value is a block without its last newline. */
  static final class LineBlockReader implements RecordReader<LongWritable, Text> {
    private final InputStream in;
    private final long start;
    private final long end;  // the last byte a line of this split may start at is end (LineRecordReader's rule)
    private final int blockBytes;
    private byte[] buf;
    private int bufStart;  // buf[bufStart, bufEnd) holds the bytes read and not yet returned
    private int bufEnd;
    private long pos;  // file offset of buf[bufStart]
    private boolean eof;

    LineBlockReader(JobConf job, FileSplit split) throws IOException {
      blockBytes = Math.max(1024, job.getInt(BLOCK_BYTES, DEFAULT_BLOCK_BYTES));
      Path file = split.getPath();
      FileSystem fs = file.getFileSystem(job);
      FSDataInputStream fileIn = fs.open(file);
      CompressionCodec codec = new CompressionCodecFactory(job).getCodec(file);
      buf = new byte[blockBytes + (blockBytes >> 2)];
      if (codec != null) {
        in = codec.createInputStream(fileIn);
        start = 0;
        end = Long.MAX_VALUE;
      } else {
        fileIn.seek(split.getStart());
        in = fileIn;
        start = split.getStart();
        end = start + split.getLength();
      }
      pos = start;
      if (start != 0) {
        // The line under way at start (or starting there) belongs to the split before.
        while (true) {
          int newline = indexOfNewline(bufStart);
          if (newline >= 0) {
            consume(newline + 1 - bufStart);
            break;
          }
          consume(bufEnd - bufStart);
          if (!fill()) {
            break;
          }
        }
      }
    }

    private int indexOfNewline(int from) {
      for (int i = from; i < bufEnd; i++) {
        if (buf[i] == '\n') {
          return i;
        }
      }
      return -1;
    }

    private void consume(int bytes) {
      bufStart += bytes;
      pos += bytes;
    }

    /** Reads more bytes after bufEnd (moving or growing the buffer as needed); false at the end of the file. */
    private boolean fill() throws IOException {
      if (eof) {
        return false;
      }
      if (bufEnd == buf.length) {
        int held = bufEnd - bufStart;
        byte[] target = held > buf.length / 2 ? new byte[buf.length * 2] : buf;
        System.arraycopy(buf, bufStart, target, 0, held);
        buf = target;
        bufStart = 0;
        bufEnd = held;
      }
      int read = in.read(buf, bufEnd, buf.length - bufEnd);
      if (read < 0) {
        eof = true;
        return false;
      }
      bufEnd += read;
      return true;
    }

    @Override
    public synchronized boolean next(LongWritable key, Text value) throws IOException {
      if (pos > end || (bufStart == bufEnd && !fill())) {
        return false;
      }
      // Lines starting before limit go in this block: up to blockBytes, and never a line starting after end.
      long limit = Math.min(pos + blockBytes, end + 1);
      int scanFrom = bufStart;
      int cut = -1;  // the index just past the block's last newline
      while (cut < 0) {
        int lastLineStart = (int) Math.min((long) bufStart + (limit - 1 - pos), Integer.MAX_VALUE);
        int newline = indexOfNewline(Math.max(scanFrom, lastLineStart));
        if (newline >= 0) {
          cut = newline + 1;
        } else {
          scanFrom = bufEnd;
          int before = bufStart;
          if (!fill()) {
            cut = bufEnd;  // the file's last line has no newline
          } else {
            scanFrom -= before - bufStart;  // the buffer may have moved
          }
        }
      }
      key.set(pos);
      int length = cut - bufStart;
      value.set(buf, bufStart, length > 0 && buf[cut - 1] == '\n' ? length - 1 : length);
      consume(length);
      return true;
    }

    @Override
    public LongWritable createKey() {
      return new LongWritable();
    }

    @Override
    public Text createValue() {
      return new Text();
    }

    @Override
    public synchronized long getPos() {
      return pos;
    }

    @Override
    public synchronized float getProgress() {
      if (end == Long.MAX_VALUE || end == start) {
        return eof ? 1.0f : 0.0f;
      }
      return Math.min(1.0f, (pos - start) / (float) (end - start));
    }

    @Override
    public synchronized void close() throws IOException {
      in.close();
    }
  }
}
