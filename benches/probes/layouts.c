/* Standalone probe, not part of the build.
 * Read rates of the f16 decode tile on each weight layout (docs/BENCHMARKS.md, Zen 4):
 * a plain f32 read, eight skewed streams (with software prefetch 0.5/1/2 KiB ahead),
 * panels of 8-element chunks (with prefetch 1 KiB), and the 16-element `Panels` layout
 * read as two 8-lane halves. 512 MiB on huge pages, best of 6 passes; argument: threads.
 *
 *     gcc -O3 -march=znver3 -fopenmp benches/probes/layouts.c -o /tmp/layouts && /tmp/layouts 1
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <omp.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#ifndef K
#define K 1024
#endif
static float X[K] __attribute__((aligned(64)));
volatile float sink;
// sequential f32 read
static float seq(const float*p,size_t n){__m256 a0=_mm256_setzero_ps(),a1=a0,a2=a0,a3=a0;
 for(size_t i=0;i+32<=n;i+=32){a0=_mm256_add_ps(a0,_mm256_loadu_ps(p+i));a1=_mm256_add_ps(a1,_mm256_loadu_ps(p+i+8));a2=_mm256_add_ps(a2,_mm256_loadu_ps(p+i+16));a3=_mm256_add_ps(a3,_mm256_loadu_ps(p+i+24));}
 a0=_mm256_add_ps(_mm256_add_ps(a0,a1),_mm256_add_ps(a2,a3));float o[8];_mm256_storeu_ps(o,a0);return o[0]+o[7];}
// f16 streams: nrows rows total, row r of panel q at (r%8)*s + (r/8)*K; PF bytes prefetch ahead
static float streams(const uint16_t*w,size_t panels,size_t s,int pf){__m256 acc[8];float tot=0;
 for(size_t q=0;q<panels;q++){const uint16_t*r=w+q*K;for(int j=0;j<8;j++)acc[j]=_mm256_setzero_ps();
  for(int c=0;c<K;c+=8){__m256 x=_mm256_load_ps(X+c);
   if(pf&&(c%32)==0){for(int j=0;j<8;j++)_mm_prefetch((const char*)(r+j*s+c)+pf,_MM_HINT_T0);}
   for(int j=0;j<8;j++)acc[j]=_mm256_fmadd_ps(x,_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(r+j*s+c))),acc[j]);}
  for(int j=1;j<8;j++)acc[0]=_mm256_add_ps(acc[0],acc[j]);float o[8];_mm256_storeu_ps(o,acc[0]);tot+=o[0];}
 return tot;}
// f16 panels chunk 8: panel q: K/8 chunks, each 8 rows x 8 elems
static float panels(const uint16_t*w,size_t np,int pf){__m256 acc[8];float tot=0;
 for(size_t q=0;q<np;q++){const uint16_t*p=w+q*8*K;for(int j=0;j<8;j++)acc[j]=_mm256_setzero_ps();
  for(int c=0;c<K;c+=8){__m256 x=_mm256_load_ps(X+c);const uint16_t*ch=p+c*8;
   if(pf){_mm_prefetch((const char*)ch+pf,_MM_HINT_T0);_mm_prefetch((const char*)ch+pf+64,_MM_HINT_T0);}
   for(int j=0;j<8;j++)acc[j]=_mm256_fmadd_ps(x,_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ch+j*8))),acc[j]);}
  for(int j=1;j<8;j++)acc[0]=_mm256_add_ps(acc[0],acc[j]);float o[8];_mm256_storeu_ps(o,acc[0]);tot+=o[0];}
 return tot;}
static float panels16(const uint16_t*w,size_t np){__m256 acc[8];float tot=0;
 for(size_t q=0;q<np;q++){const uint16_t*p=w+q*8*K;for(int j=0;j<8;j++)acc[j]=_mm256_setzero_ps();
  for(int c=0;c<K;c+=16){const uint16_t*ch=p+c*8;__m256 x0=_mm256_load_ps(X+c),x1=_mm256_load_ps(X+c+8);
   for(int j=0;j<8;j++)acc[j]=_mm256_fmadd_ps(x0,_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ch+j*16))),acc[j]);
   for(int j=0;j<8;j++)acc[j]=_mm256_fmadd_ps(x1,_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ch+j*16+8))),acc[j]);}
  for(int j=1;j<8;j++)acc[0]=_mm256_add_ps(acc[0],acc[j]);float o[8];_mm256_storeu_ps(o,acc[0]);tot+=o[0];}
 return tot;}
int main(int argc,char**argv){size_t bytes=(size_t)512<<20;int T=argc>1?atoi(argv[1]):1;omp_set_num_threads(T);
 char*buf=mmap(0,bytes,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);madvise(buf,bytes,MADV_HUGEPAGE);
 for(size_t i=0;i<bytes;i+=8)*(uint64_t*)(buf+i)=0x3c003c003c003c00ull;for(int i=0;i<K;i++)X[i]=1.0f/(i+1);
 size_t per=bytes/T;
 const char*names[]={"seq f32","streams","streams pf512","streams pf1024","streams pf2048","panels","panels pf1024","panels16"};
 double best[8]={0};
 for(int it=0;it<6;it++)for(int m=0;m<8;m++){double t0=now();
  #pragma omp parallel
  {int id=omp_get_thread_num();char*b=buf+id*per;float r=0;
   size_t panelsN=per/2/(8*K);size_t s=panelsN*K+33*32; // skew 33 lines (in f16 elems: 33*32)
   size_t np=(per/2 - 8*33*32)/(8*K);
   switch(m){case 0:r=seq((float*)b,per/4);break;
    case 1:r=streams((uint16_t*)b,np,np*K+33*32,0);break;
    case 2:r=streams((uint16_t*)b,np,np*K+33*32,512);break;
    case 3:r=streams((uint16_t*)b,np,np*K+33*32,1024);break;
    case 4:r=streams((uint16_t*)b,np,np*K+33*32,2048);break;
    case 5:r=panels((uint16_t*)b,panelsN,0);break;
    case 6:r=panels((uint16_t*)b,panelsN,1024);break;
    case 7:r=panels16((uint16_t*)b,panelsN);break;}
   sink+=r;}
  double dt=now()-t0;double gb=bytes/dt/1e9;if(gb>best[m])best[m]=gb;}
 for(int m=0;m<8;m++)printf("%-16s %.1f GB/s\n",names[m],best[m]);}
